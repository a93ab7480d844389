"""CPU of the SQLite relay's read of one lane when nothing waits after the lane's position
and N notifications lie behind it (their rows still 'accepted', as at flat out before the
router marks them): the lane read of 2026-12-02 (the position from subqueries) against the
one of herald.storage.native (the position as parameters), alternating, on a database that
`herald migrate` made.

    HERALD_DATABASE_URL=sqlite:////tmp/take.db .venv/bin/herald migrate
    PYTHONPATH=src .venv/bin/python docs/figures/2026-12-03-sqlite-relay-take.py /tmp/take.db N
"""

from __future__ import annotations

import sqlite3
import statistics
import sys
import time

from herald.storage import native as n

OLD_LANE = """
SELECT n.relay_xid AS xid, n.relay_seq AS seq, n.id, n.user_id AS key
FROM notifications AS n
WHERE n.state = 'accepted' AND n.lane_order = ?1
  AND (n.lane_order, n.relay_xid, n.relay_seq) > (
      ?1,
      (SELECT position_xid FROM relay_positions WHERE lane = ?1),
      (SELECT position_seq FROM relay_positions WHERE lane = ?1))
ORDER BY n.lane_order, n.relay_xid, n.relay_seq
LIMIT ?2
"""
NEW_LANE = n.sqlite_sql(n.RELAY_LANE_SQLITE)
LANE = 1  # bulk


def seed(connection: sqlite3.Connection, count: int) -> None:
    connection.execute("DELETE FROM notifications")
    connection.executemany(
        "INSERT INTO notifications (id, idempotency_key, request_hash, user_id, category,"
        " priority, content, state, created_at, lane_order, relay_xid, relay_seq)"
        " VALUES (?1, ?1, '', 'u', 'c', 'normal', '{}', 'accepted', '2026-12-03 00:00:00.000000',"
        " ?2, 0, ?3)",
        [(f"n{i}", LANE, i) for i in range(1, count + 1)],
    )
    connection.execute(
        "UPDATE relay_positions SET position_xid = 0, position_seq = ? WHERE lane = ?",
        (count, LANE),
    )
    connection.commit()


def old(connection: sqlite3.Connection) -> list[object]:
    return connection.execute(OLD_LANE, (LANE, 1000)).fetchall()


def new(connection: sqlite3.Connection) -> list[object]:
    xid, seq = connection.execute(n.RELAY_POSITIONS_SQLITE + " WHERE lane = ?", (LANE,)).fetchone()[
        1:
    ]
    return connection.execute(NEW_LANE, (LANE, xid, seq, 1000)).fetchall()


def cpu_ms(read: object, connection: sqlite3.Connection, rounds: int) -> float:
    start = time.process_time()
    for _ in range(rounds):
        assert read(connection) == []  # type: ignore[operator]
    return (time.process_time() - start) / rounds * 1000


def main() -> None:
    path, count = sys.argv[1], int(sys.argv[2])
    connection = sqlite3.connect(path)
    seed(connection, count)
    rounds = max(20, 200_000 // max(count, 1))
    figures: dict[str, list[float]] = {"old": [], "new": []}
    for _ in range(5):
        figures["old"].append(cpu_ms(old, connection, rounds))
        figures["new"].append(cpu_ms(new, connection, rounds))
    for name, runs in figures.items():
        print(
            f"{name}: median {statistics.median(runs):.3f} ms of CPU per empty lane read "
            f"({', '.join(f'{r:.3f}' for r in runs)}; N = {count})"
        )


if __name__ == "__main__":
    main()
