"""The stream worker: Faust agents folding WMS/ERP inventory events into the Redis store."""
