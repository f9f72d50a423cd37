"""Entry point: `genai-gateway` (or `python -m genai_gateway`)."""

from __future__ import annotations

import uvicorn

from genai_common.logs import setup_logging
from genai_common.mtls import files_from_settings
from genai_common.settings import load_settings
from genai_gateway.app import create_app
from genai_gateway.settings import GatewaySettings


def main() -> None:
    settings = load_settings(GatewaySettings)
    setup_logging("gateway", settings.log_level)
    files_from_settings(settings)  # internal calls are mTLS: missing certificate settings stop here
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        # The gateway writes its own access line (MetricsMiddleware); uvicorn's would be built and dropped.
        access_log=False,
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        server_header=False,
        timeout_graceful_shutdown=10,
        # Longer than nginx keeps idle upstream connections (60 s): nginx closes first, so a request
        # never races uvicorn closing the connection it was sent on (which nginx would answer with 502).
        timeout_keep_alive=75,
    )


if __name__ == "__main__":
    main()
