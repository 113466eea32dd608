"""Emits and exits without close(), after forking a child that emits too; used by
test_process_exit.py. Usage: process_exit_driver.py URL KEY"""

import os
import sys

from mcp_metrics_client import MetricsClient

client = MetricsClient(sys.argv[1], sys.argv[2], "exit", flush_interval=60)  # nothing due before exit
for seq in range(50):
    client.emit("custom", 1.0, dimensions={"process": "parent", "seq": seq})
child = os.fork()
if child == 0:
    # The parent's 50 are the parent's to send; the child sends its own 7.
    for seq in range(7):
        client.emit("custom", 1.0, dimensions={"process": "child", "seq": seq})
    sys.exit(0)
_, status = os.waitpid(child, 0)
sys.exit(os.waitstatus_to_exitcode(status) if hasattr(os, "waitstatus_to_exitcode") else status)
