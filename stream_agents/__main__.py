"""`python -m stream_agents`: the same as `atp worker`."""

from atp_service.config import get_settings
from stream_agents.app import run_worker

if __name__ == "__main__":
    run_worker(get_settings())
