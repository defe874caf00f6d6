"""Available-to-promise inventory service: fold WMS/ERP streams, serve and reserve ATP."""

__version__ = "0.1.0"
