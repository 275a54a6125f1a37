"""Write the engine oracle's golden file from the code as it is now.

``python -m tests.oracle.record`` — only after a change meant to alter what the engine
produces; review the diff of ``tests/data/engine_oracle.jsonl`` before committing it.
"""

from __future__ import annotations

from pathlib import Path

from tests.oracle.workload import run

GOLDEN = Path(__file__).parents[1] / "data" / "engine_oracle.jsonl"


def main() -> None:
    lines = run()
    GOLDEN.write_bytes(b"".join(line + b"\n" for line in lines))
    print(f"wrote {len(lines)} steps to {GOLDEN}")


if __name__ == "__main__":
    main()
