"""Run one provider emulator standalone, for ``dispatcher dev`` and the benchmarks.

    python -m channels.emulators telegram --port 8081
    python -m channels.emulators zalo --port 8082      (the OA API and ZNS on one port)
    python -m channels.emulators messenger --port 8083
    python -m channels.emulators fcm --port 8084

It prints the settings that point the service at it, then serves until interrupted.
``GET <base>/_emulator/stats`` answers request counts by status and accepted messages (for
benchmarks; not part of any provider's API).
"""

from __future__ import annotations

import argparse
import signal
import threading

from channels.emulators.base import Emulator
from channels.emulators.fcm import FcmEmulator
from channels.emulators.messenger import MessengerEmulator
from channels.emulators.telegram import TelegramEmulator
from channels.emulators.zns import ZnsEmulator


def build(name: str, port: int, rate: float | None) -> tuple[Emulator, dict[str, str]]:
    if name == "telegram":
        telegram = TelegramEmulator(port=port, global_rate=rate or 30.0)
        return telegram, {"TELEGRAM_TOKEN": telegram.token}
    if name == "zalo":
        # Templates are the OA's own (registered with Zalo): any id is taken here.
        zalo = ZnsEmulator(port=port, api_rate=rate or 100.0, any_template=True)
        return zalo, {
            "ZALO_APP_ID": zalo.app_id,
            "ZALO_SECRET_KEY": zalo.secret_key,
            "ZALO_ACCESS_TOKEN": zalo.access_token,
            "ZALO_REFRESH_TOKEN": zalo.refresh_token,
        }
    if name == "messenger":
        messenger = MessengerEmulator(port=port, page_rate=rate or 300.0)
        return messenger, {
            "FACEBOOK_PAGE_ID": messenger.page_id,
            "FACEBOOK_PAGE_TOKEN": messenger.page_token,
        }
    fcm = FcmEmulator(port=port)
    return fcm, {"FCM_PROJECT_ID": fcm.project_id}


def urls(name: str, base: str) -> dict[str, str]:
    return {
        "telegram": {"TELEGRAM_BASE_URL": f"{base}/bot"},
        "zalo": {"ZALO_API_URL": base, "ZALO_OAUTH_URL": base, "ZNS_API_URL": base},
        "messenger": {"FACEBOOK_GRAPH_URL": base},
        "fcm": {"FCM_ENDPOINT": base, "FCM_TOKEN_URI": f"{base}/token"},
    }[name]


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m channels.emulators", description=__doc__.split("\n")[0]
    )
    parser.add_argument("provider", choices=["telegram", "zalo", "messenger", "fcm"])
    parser.add_argument("--port", type=int, default=0, help="default: any free port")
    parser.add_argument("--rate", type=float, default=None, help="the provider's rate limit (/s)")
    args = parser.parse_args()
    emulator, settings = build(args.provider, args.port, args.rate)
    emulator.start()
    settings |= urls(args.provider, emulator.base_url)
    print(f"{args.provider} emulator on {emulator.base_url}", flush=True)
    for key, value in settings.items():
        print(f"export DISPATCHER_{key}={value}", flush=True)
    print(
        f"# stats (not part of the provider's API): GET {emulator.base_url}/_emulator/stats",
        flush=True,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    emulator.stop()


if __name__ == "__main__":
    main()
