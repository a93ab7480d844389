"""What one idle Kafka consumer costs, per thread, by how it is polled and by group protocol.

    eval "$(./scripts/services.sh env)"
    .venv/bin/python docs/figures/2026-12-04-idle-consumer.py MODE SECONDS [classic|consumer]

MODE: `poll05` (poll(0.5) in a loop, as herald.bus.kafka's fetch thread does), `poll019`
(poll(0.199): under confluent-kafka's 200 ms chunk), `sleep2` (poll(0) every 2 s: no
blocking poll at all, the floor of librdkafka's own threads). The consumer joins a group
of its own on a 12-partition topic with Herald's consumer settings, settles 12 s, then
prints each thread's CPU (% of a core) and wake-ups a second over SECONDS, from
/proc/self/task/<tid>/schedstat. `consumer` uses the KIP-848 group protocol (Kafka 4).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient, NewTopic

TOPIC = "figures-idle-consumer"


def threads() -> dict[str, tuple[str, int, int]]:
    found = {}
    for tid in os.listdir("/proc/self/task"):
        name = Path(f"/proc/self/task/{tid}/comm").read_text().strip()
        on_cpu, _, runs = map(int, Path(f"/proc/self/task/{tid}/schedstat").read_text().split())
        found[tid] = (name, on_cpu, runs)
    return found


def main(mode: str, seconds: float, protocol: str) -> None:
    bootstrap = os.environ.get("HERALD_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    AdminClient({"bootstrap.servers": bootstrap}).create_topics([NewTopic(TOPIC, 12, 1)])
    time.sleep(2)
    config = {
        "bootstrap.servers": bootstrap,
        "group.id": f"figures-{mode}-{protocol}-{os.getpid()}",
        "enable.auto.commit": True,
        "enable.auto.offset.store": False,
        "auto.commit.interval.ms": 500,
        "fetch.wait.max.ms": 2000,
        "queued.min.messages": 2000,
        "queued.max.messages.kbytes": 2048,
    }
    if protocol == "consumer":
        config["group.protocol"] = "consumer"  # the broker paces the heartbeats
    else:
        config.update({"session.timeout.ms": 6000, "heartbeat.interval.ms": 2000})
    consumer = Consumer(config)
    consumer.subscribe([TOPIC])
    polls = {
        "poll05": lambda: consumer.poll(0.5),
        "poll019": lambda: consumer.poll(0.199),
        "sleep2": lambda: (consumer.poll(0), time.sleep(2)),
    }
    poll = polls[mode]

    def poll_forever() -> None:
        while True:
            poll()

    threading.Thread(target=poll_forever, daemon=True).start()
    time.sleep(12)  # join the group, get the assignment, settle
    before = threads()
    time.sleep(seconds)
    after = threads()
    total_cpu = total_runs = 0.0
    for tid, (name, on_cpu, runs) in sorted(after.items()):
        if tid not in before:
            continue
        cpu = (on_cpu - before[tid][1]) / seconds / 1e7
        wakeups = (runs - before[tid][2]) / seconds
        total_cpu, total_runs = total_cpu + cpu, total_runs + wakeups
        print(f"{mode:8} {protocol:8} {name:14} {cpu:6.3f} % {wakeups:5.1f} wake-ups/s")
    print(
        f"{mode:8} {protocol:8} {'all threads':14} {total_cpu:6.3f} % {total_runs:5.1f} wake-ups/s"
    )
    sys.stdout.flush()
    os._exit(0)  # close() would wait for the poll thread's current call


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "classic")
