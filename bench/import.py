"""Benchmark of the recipient import: rows per second, and whether memory grows with the file.

    python -m bench.import                                # 1,000,000 recipients, SQLite
    python -m bench.import --recipients 100000
    python -m bench.import --database postgresql          # a throwaway database, dropped after
    python -m bench.import --compare 100000,1000000       # does peak memory grow with N?
    python -m bench.import --email-share 1                # every row has an email address

One measurement, from scratch, in a child process of its own, so that its peak RSS is its own:

1. *Setup (not timed).* A fresh SQLite file in a temporary directory, or a throwaway PostgreSQL
   database on ``--postgres-url`` (an admin URL allowed to CREATE DATABASE). Then the schema
   (``migrate.upgrade``), exactly as ``dispatcher migrate`` makes it.
2. *Import (timed).* N recipients are generated as CSV bytes on the fly: a generator, never a
   list, so the file exists only as the engine reads it. They go through
   ``dispatcher.recipients.importer.import_recipients``, the engine behind the HTTP endpoint
   and the CLI. Every row is checked by ``RecipientIn``, its province and phone are
   normalised, and the rows are upserted in chunks of 1,000, one transaction per chunk.
   The timed span includes generating the CSV; the generator alone is timed too and printed.
3. *Memory.* The child's RSS is sampled at every chunk. Printed: RSS when the import starts,
   the peak during the import, and the process's peak (``ru_maxrss``, setup included).
4. *Check.* The database holds as many recipients as the summary says were created.
5. *Re-import (with ``--reimport``).* The same file once more, every row an update, timed
   on its own. The memory figures cover both imports.

The rows are Vietnamese names with a birth date (half ``DD/MM/YYYY``, half ISO), a province
(current and former names, with or without diacritics, and codes), a phone number and a unit
code (attributes), and addresses: VssID, Zalo and email, each for a share of the rows
(``--email-share`` and so on). A small share (``--bad-share``, 0.1% by default) are bad rows of
five kinds, so the rejection path runs too.

Figures are printed and written to ``bench/results/import-<db>-<N>[-<label>].json``. With
``--compare`` the comparison goes to ``bench/results/import-compare-<db>-<A>-<B>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import os
import pstats
import random
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from bench.common import (
    DEFAULT_POSTGRES_URL,
    GIVENS,
    MIDDLES,
    RESULT_TAG,
    RESULTS_DIR,
    ROOT,
    SURNAMES,
    BenchError,
    MiB,
    postgres_database,
    relative,
    write_json,
)
from bench.common import machine as common_machine

TARGET_ROWS_PER_SECOND = 20_000
# Rows are cut from a pool of pre-rendered rows: generating must cost little next to importing.
POOL_SIZE = 10_007
BLOCK_BYTES = 64 * 1024

# How provinces really arrive: current names, former ones, no diacritics, prefixes, codes.
PROVINCES: tuple[str, ...] = (
    "Hà Nội",
    "Thành phố Hồ Chí Minh",
    "TP. HCM",
    "Hải Phòng",
    "Đà Nẵng",
    "Cần Thơ",
)
PROVINCES += ("Tỉnh Quảng Ninh", "Nghệ An", "Thanh Hóa", "Khánh Hoà", "Lâm Đồng", "Huế")
PROVINCES += ("Thừa Thiên Huế", "Bình Dương", "Bà Rịa - Vũng Tàu", "Quảng Nam", "Hải Dương")
PROVINCES += ("Nam Định", "Kiên Giang", "Long An", "ha noi", "Da Nang", "dong nai", "01", "79")
MAIL_DOMAINS = ("gmail.com", "yahoo.com.vn", "outlook.com", "vnpt.vn", "fpt.com.vn")
PHONE_PREFIXES: tuple[str, ...] = (
    "090",
    "091",
    "093",
    "096",
    "097",
    "098",
    "032",
    "035",
    "038",
    "070",
    "077",
)
PHONE_PREFIXES += ("079", "081", "083", "085", "088", "056", "058", "059")
HEADER = "external_id,full_name,birth_date,province,language,kind,email,zalo,vssid,phone,ma_don_vi"
BAD_KINDS = ("email", "birth_date", "province", "phone", "full_name")


@dataclass(frozen=True, slots=True)
class Mix:
    """What share of the generated rows has each kind of value."""

    email: float
    zalo: float
    vssid: float
    phone: float
    bad: float


# -- the CSV, generated -------------------------------------------------------------------------


def _pool(mix: Mix, seed: int) -> list[str]:
    """Pre-rendered rows, with ``{0}`` where the row's external_id goes.

    The external_id is the row's own, and so is every email and VssID account that contains
    it. Everything else repeats every ``POOL_SIZE`` rows. That does not matter to the engine,
    which checks every row in full all the same.
    """
    rng = random.Random(seed)
    bad_every = round(1 / mix.bad) if mix.bad > 0 else 0
    pool: list[str] = []
    for index in range(POOL_SIZE):
        surname, middle, given = rng.choice(SURNAMES), rng.choice(MIDDLES), rng.choice(GIVENS)
        name = f"{surname} {middle} {given}"
        day, month, year = rng.randint(1, 28), rng.randint(1, 12), rng.randint(1940, 2007)
        born = f"{day:02d}/{month:02d}/{year}" if index % 2 else f"{year}-{month:02d}-{day:02d}"
        province = rng.choice(PROVINCES)
        language = "en" if rng.random() < 0.02 else "vi"
        kind = "organization" if rng.random() < 0.01 else "person"
        phone = f"{rng.choice(PHONE_PREFIXES)}{rng.randint(0, 9_999_999):07d}"
        zalo = phone if rng.random() < mix.zalo else ""
        phone = phone if rng.random() < mix.phone else ""
        vssid = "{0}" if rng.random() < mix.vssid else ""  # the account is the BHXH number
        local = given.lower().replace("đ", "d")
        email = f"{local}.{{0}}@{rng.choice(MAIL_DOMAINS)}" if rng.random() < mix.email else ""
        unit = f"TB{rng.randint(1, 99_999):05d}"
        if bad_every and index % bad_every == bad_every // 2:
            bad = BAD_KINDS[(index // bad_every) % len(BAD_KINDS)]
            if bad == "email":
                email = f"{local}.{{0}}@khong-co-ten-mien"
            elif bad == "birth_date":
                born = "31/02/1990"
            elif bad == "province":
                province = "Đông Lào"
            elif bad == "phone":
                phone = "0212345"
            else:
                name = ""
        fields = ("{0}", name, born, province, language, kind, email, zalo, vssid, phone, unit)
        pool.append(",".join(fields) + "\n")
    return pool


def generate_csv(count: int, mix: Mix, *, seed: int = 2026) -> Iterator[bytes]:
    """``count`` recipients as CSV, in blocks of about 64 KiB: a generator, never a list."""
    pool = _pool(mix, seed)
    yield (HEADER + "\n").encode()
    block: list[str] = []
    size = 0
    for number in range(count):
        row = pool[number % POOL_SIZE].format(7_900_000_000 + number)
        block.append(row)
        size += len(row)
        if size >= BLOCK_BYTES:
            yield "".join(block).encode()
            block, size = [], 0
    if block:
        yield "".join(block).encode()


# -- one measurement (in a child process) -------------------------------------------------------


@dataclass(slots=True)
class Measurement:
    database: str
    recipients: int
    mix: dict[str, float]
    rows: int
    created: int
    updated: int
    rejected: int
    rows_in_database: int
    bytes_read: int
    elapsed_seconds: float
    rows_per_second: float
    generator_seconds: float
    rss_at_start_mib: float
    rss_peak_during_import_mib: float
    rss_growth_during_import_mib: float
    max_rss_mib: float
    rss_samples: list[tuple[int, float]]
    # With --reimport: the same file once more, every row an update.
    reimport_seconds: float | None = None
    reimport_rows_per_second: float | None = None


def _rss_mib() -> float:
    with open("/proc/self/statm") as handle:  # Linux; cheap enough to read at every chunk
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MiB


def _max_rss_mib() -> float:
    # ru_maxrss is in KiB on Linux (bytes on macOS).
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / MiB


@contextlib.contextmanager
def _database(kind: str, postgres_url: str, keep: bool) -> Iterator[str]:
    """A fresh, migrated database; removed afterwards unless ``keep``."""
    from dispatcher.core import migrate

    if kind == "sqlite":
        directory = tempfile.mkdtemp(prefix="dispatcher-bench-import-")
        url = f"sqlite:///{directory}/dispatcher.db"
        try:
            migrate.upgrade(url)
            yield url
        finally:
            if keep:
                print(f"kept {directory}", file=sys.stderr)
            else:
                shutil.rmtree(directory, ignore_errors=True)
        return
    with postgres_database(postgres_url, keep=keep, prefix="dispatcher_bench_import") as url:
        migrate.upgrade(url)
        yield url


def measure(args: argparse.Namespace, mix: Mix) -> Measurement:
    from sqlalchemy import func, select

    from dispatcher.core.db import Database
    from dispatcher.recipients.importer import import_recipients
    from dispatcher.tables.recipients import Recipient

    started = time.perf_counter()
    for _ in generate_csv(args.recipients, mix):
        pass
    generator_seconds = time.perf_counter() - started

    with _database(args.database, args.postgres_url, args.keep) as url:
        db = Database(url)
        samples: list[tuple[int, float]] = []
        peak = 0.0

        def progress(done: int) -> None:
            nonlocal peak
            rss = _rss_mib()
            peak = max(peak, rss)
            # About 50 samples whatever N is (a row is about 120 bytes): the curve, not every
            # chunk.
            if not samples or done - samples[-1][0] >= args.recipients * 2.4:
                samples.append((done, round(rss, 1)))

        rss_at_start = _rss_mib()
        profiler = cProfile.Profile() if args.profile else None
        if profiler is not None:
            profiler.enable()
        summary = import_recipients(
            generate_csv(args.recipients, mix),
            format="csv",
            db=db,
            chunk_size=args.chunk_size,
            progress=progress,
        )
        if profiler is not None:
            profiler.disable()
            _write_profile(profiler, args, mix)
        peak = max(peak, _rss_mib())
        with db.transaction() as session:
            in_database = int(session.scalar(select(func.count()).select_from(Recipient)) or 0)
        again = None
        if args.reimport:
            again = import_recipients(
                generate_csv(args.recipients, mix), format="csv", db=db, progress=progress
            )
            if again.updated != summary.created or again.created:
                raise BenchError(f"the re-import created {again.created}, updated {again.updated}")
        db.dispose()
    if in_database != summary.created:
        raise BenchError(f"{in_database} recipients in the database, {summary.created} created")
    return Measurement(
        database=args.database,
        recipients=args.recipients,
        mix=asdict(mix),
        rows=summary.rows,
        created=summary.created,
        updated=summary.updated,
        rejected=summary.rejected,
        rows_in_database=in_database,
        bytes_read=summary.bytes_read,
        elapsed_seconds=round(summary.elapsed_seconds, 2),
        rows_per_second=round(summary.rows_per_second),
        generator_seconds=round(generator_seconds, 2),
        rss_at_start_mib=round(rss_at_start, 1),
        rss_peak_during_import_mib=round(peak, 1),
        rss_growth_during_import_mib=round(peak - rss_at_start, 1),
        max_rss_mib=round(max(_max_rss_mib(), peak), 1),
        rss_samples=samples,
        reimport_seconds=None if again is None else round(again.elapsed_seconds, 2),
        reimport_rows_per_second=None if again is None else round(again.rows_per_second),
    )


def _write_profile(profiler: cProfile.Profile, args: argparse.Namespace, mix: Mix) -> None:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"import-profile-{args.database}-{args.recipients}{_label(mix)}.txt"
    with path.open("w") as handle:
        stats = pstats.Stats(profiler, stream=handle)
        stats.sort_stats("cumulative").print_stats(40)
        stats.sort_stats("tottime").print_stats(40)
    print(f"profile written to {relative(path)}", file=sys.stderr)


# -- the parent: runs children, prints, writes JSON ---------------------------------------------


def _label(mix: Mix) -> str:
    default = Mix(**DEFAULT_MIX)
    if mix == default:
        return ""
    changed = [f"{k}{v:g}" for k, v in asdict(mix).items() if asdict(default)[k] != v]
    return "-" + "-".join(changed)


def _suffix(args: argparse.Namespace) -> str:
    return "-reimport" if args.reimport else ""


DEFAULT_MIX = {"email": 0.3, "zalo": 0.5, "vssid": 0.6, "phone": 0.9, "bad": 0.001}


def run_child(args: argparse.Namespace, recipients: int) -> dict[str, Any]:
    """One measurement in a fresh process; its peak RSS is then its own."""
    command = [
        sys.executable,
        "-m",
        "bench.import",
        "--child",
        "--recipients",
        str(recipients),
        "--database",
        args.database,
        "--postgres-url",
        args.postgres_url,
        "--chunk-size",
        str(args.chunk_size),
        "--email-share",
        str(args.email_share),
        "--zalo-share",
        str(args.zalo_share),
        "--vssid-share",
        str(args.vssid_share),
        "--phone-share",
        str(args.phone_share),
        "--bad-share",
        str(args.bad_share),
        *(["--keep"] if args.keep else []),
        *(["--profile"] if args.profile else []),
        *(["--reimport"] if args.reimport else []),
    ]
    # From the project root, the child imports this tree's packages (``-m`` puts it first).
    process = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
    sys.stderr.write(process.stderr)
    for line in process.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return dict(json.loads(line[len(RESULT_TAG) :]))
    raise BenchError(f"the measurement of {recipients} failed (exit {process.returncode})")


def machine() -> dict[str, Any]:
    return {**common_machine(), "sqlite": sqlite3.sqlite_version}


def print_measurement(result: dict[str, Any]) -> None:
    rate = result["rows_per_second"]
    if result["database"] == "sqlite":
        verdict = "meets" if rate >= TARGET_ROWS_PER_SECOND else "BELOW"
        aim = f"{verdict} the {TARGET_ROWS_PER_SECOND:,} rows/s aim on SQLite"
    else:
        aim = f"the {TARGET_ROWS_PER_SECOND:,} rows/s aim is for SQLite"
    mix = ", ".join(f"{k} {v:g}" for k, v in result["mix"].items())
    print(
        f"\n{result['database']}: {result['recipients']:,} recipients ({mix})\n"
        f"  imported     {result['rows']:,} rows in {result['elapsed_seconds']:.1f} s = "
        f"{rate:,} rows/s ({aim})\n"
        f"  outcome      created {result['created']:,}, updated {result['updated']:,}, "
        f"rejected {result['rejected']:,}; {result['rows_in_database']:,} in the database\n"
        f"  generator    {result['generator_seconds']:.1f} s of the above is making the CSV "
        f"({result['bytes_read'] / MiB:,.0f} MiB)\n"
        f"  memory       RSS {result['rss_at_start_mib']:.0f} MiB at the start, peak "
        f"{result['rss_peak_during_import_mib']:.0f} MiB during the import "
        f"(+{result['rss_growth_during_import_mib']:.1f} MiB); process peak "
        f"{result['max_rss_mib']:.0f} MiB"
    )
    if result.get("reimport_seconds") is not None:
        print(
            f"  re-import    the same file again, every row an update: "
            f"{result['reimport_seconds']:.1f} s = {result['reimport_rows_per_second']:,} rows/s"
        )
    curve = "  ".join(f"{done / MiB:.0f}:{rss:.0f}" for done, rss in result["rss_samples"][::5])
    print(f"  RSS curve    (MiB read: MiB RSS) {curve}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.import",
        description="Throughput and memory of the recipient import (CSV, streamed).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--recipients", type=int, default=1_000_000, help="N")
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("DISPATCHER_BENCH_POSTGRES_URL", DEFAULT_POSTGRES_URL),
        help="an admin URL allowed to CREATE DATABASE (or $DISPATCHER_BENCH_POSTGRES_URL)",
    )
    parser.add_argument(
        "--compare",
        default=None,
        help="A,B: run both sizes from scratch and say whether peak memory grew",
    )
    parser.add_argument(
        "--growth-threshold",
        type=float,
        default=0.10,
        help="peak RSS growth from A to B above this share counts as 'grew'",
    )
    parser.add_argument("--chunk-size", type=int, default=1_000, help="rows per transaction")
    parser.add_argument("--email-share", type=float, default=DEFAULT_MIX["email"])
    parser.add_argument("--zalo-share", type=float, default=DEFAULT_MIX["zalo"])
    parser.add_argument("--vssid-share", type=float, default=DEFAULT_MIX["vssid"])
    parser.add_argument("--phone-share", type=float, default=DEFAULT_MIX["phone"])
    parser.add_argument(
        "--bad-share", type=float, default=DEFAULT_MIX["bad"], help="share of bad rows"
    )
    parser.add_argument(
        "--reimport", action="store_true", help="then import the same file again (all updates)"
    )
    parser.add_argument("--profile", action="store_true", help="cProfile the import")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    mix = Mix(
        email=args.email_share,
        zalo=args.zalo_share,
        vssid=args.vssid_share,
        phone=args.phone_share,
        bad=args.bad_share,
    )
    try:
        if args.child:
            print(RESULT_TAG + json.dumps(asdict(measure(args, mix))), flush=True)
            return 0
        host = machine()
        if args.compare is None:
            result = run_child(args, args.recipients) | {"machine": host}
            print_measurement(result)
            name = f"import-{args.database}-{args.recipients}{_label(mix)}{_suffix(args)}.json"
            path = write_json(name, result)
            print(f"\nwritten to {relative(path)}")
            return 0
        sizes = [int(size) for size in args.compare.split(",")]
        if len(sizes) != 2 or sizes[0] >= sizes[1]:
            raise BenchError("--compare takes two sizes, smaller first: e.g. 100000,1000000")
        results = [run_child(args, size) for size in sizes]
        for result in results:
            print_measurement(result)
        small, large = results
        growth = {
            key: (large[key] - small[key]) / small[key]
            for key in ("rss_peak_during_import_mib", "max_rss_mib")
        }
        grew = any(value > args.growth_threshold for value in growth.values())
        print(
            f"\n{sizes[1] // sizes[0]}x the rows: peak RSS during the import "
            f"{small['rss_peak_during_import_mib']:.0f} -> "
            f"{large['rss_peak_during_import_mib']:.0f} MiB "
            f"({growth['rss_peak_during_import_mib']:+.1%}), process peak "
            f"{small['max_rss_mib']:.0f} -> {large['max_rss_mib']:.0f} MiB "
            f"({growth['max_rss_mib']:+.1%}): memory "
            f"{'GREW' if grew else 'flat'} (threshold {args.growth_threshold:.0%})"
        )
        payload = {
            "sizes": sizes,
            "growth": {key: round(value, 4) for key, value in growth.items()},
            "grew": grew,
            "threshold": args.growth_threshold,
            "results": results,
            "machine": host,
        }
        name = f"import-compare-{args.database}-{sizes[0]}-{sizes[1]}{_label(mix)}{_suffix(args)}"
        path = write_json(f"{name}.json", payload)
        print(f"written to {relative(path)}")
        return 0
    except BenchError as exc:
        print(f"bench.import: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
