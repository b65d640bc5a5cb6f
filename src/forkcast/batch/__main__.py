"""The release image's scoring job: `python -m forkcast.batch --input FILE_OR_URL`, run in the bento's src/.

It scores with the model of the bento the image holds (`$BENTO_PATH`, which the image sets) and appends to the
table of `$FORKCAST_SCORE_DATABASE_URL` (never an option: a URL with a password would show in the pod's spec and
`ps`). deploy/k8s/score/ runs it as an indexed Job, each index scoring its share: `--shard $(JOB_COMPLETION_INDEX)/N`.
The project's own command is `forkcast score`; this one takes the same options that make sense in an image.
Exit codes as `forkcast`'s: 0 done, 1 the input failed its checks or the run stopped part-way, 2 bad usage or setup,
3 nothing to score.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from forkcast.batch import score as scoring
from forkcast.batch import table as tables

PROGRESS_SECONDS = 10.0


def parser() -> argparse.ArgumentParser:
    parse = argparse.ArgumentParser(prog="python -m forkcast.batch", description=__doc__.split("\n", 1)[0])
    parse.add_argument("--input", required=True, help="CSV or Parquet file of the model's inputs: a path or s3://...")
    parse.add_argument("--table", default=tables.DEFAULT_TABLE, help="table to append to (SCHEMA.TABLE in PostgreSQL)")
    parse.add_argument("--key", default="", help="comma-separated column(s) that say what each row predicts")
    parse.add_argument("--chunk-rows", type=int, default=scoring.DEFAULT_CHUNK_ROWS, help="rows per transaction")
    parse.add_argument("--shard", default="0/1", help="INDEX/COUNT: the rows whose position modulo COUNT is INDEX")
    parse.add_argument("--bento-dir", type=Path, default=None, help="the bento (default: $BENTO_PATH)")
    return parse


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # a pod is stopped with SIGTERM: roll the chunk back and say so
    try:
        url_text = os.environ.get(tables.URL_ENV, "").strip()
        if not url_text:
            raise scoring.ScoringError(f"set {tables.URL_ENV} to the database's URL ({tables.URL_FORMS})")
        url = tables.parse_url(url_text)
        index, count = scoring.parse_shard(args.shard)
        scoring.check_chunk_rows(args.chunk_rows)
        bento_dir = args.bento_dir or Path(os.environ.get("BENTO_PATH", "."))
        model = scoring.from_bento_dir(bento_dir)
        writer = tables.connect(url, args.table, model.inputs)
        frame, digest = scoring.read_file(args.input, model.inputs)
        keys = [name.strip() for name in args.key.split(",") if name.strip()]
        batch = scoring.batch_of(frame, model.inputs, source=f"{args.input} (sha256 {digest[:12]})", key=keys,
                                 digest=digest)  # fmt: skip
        part = scoring.shard(batch, index, count)
        writer.create()
        info = model.info
        _say(
            f"{model.bento} (model version {info.model_version}, {info.backend}) scores {len(part):,} of "
            f"{len(batch):,} rows (shard {index}/{count}), keyed by {batch.keyed_by}, into {writer.where}; code from "
            f"{Path(scoring.__file__).parent}"
        )
        result = scoring.score(
            model, part, writer, scored_at=dt.datetime.now(dt.UTC), chunk_rows=args.chunk_rows, progress=_progress()
        )
    except scoring.ScoringError as exc:
        _say(f"error: {exc}")
        return exc.exit_code
    except KeyboardInterrupt:  # between two chunks: whatever was written is whole
        _say("error: interrupted; run it again to resume (rows already written are skipped)")
        return scoring.EXIT_CHECK_FAILED
    _say(f"{result.added:,} predictions added, {result.already:,} there already, in {result.seconds:.1f}s")
    return 0


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _progress() -> scoring.ProgressCallback:
    last = [time.monotonic()]

    def show(progress: scoring.Progress) -> None:
        if time.monotonic() - last[0] >= PROGRESS_SECONDS or progress.done == progress.total:
            last[0] = time.monotonic()
            _say(f"  {progress.done:,}/{progress.total:,} rows ({progress.added:,} added), {progress.rate:,.0f} rows/s")

    return show


if __name__ == "__main__":
    sys.exit(main())
