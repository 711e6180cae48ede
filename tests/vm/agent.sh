#!/bin/sh
# The harness's command channel, installed in every vm-test guest as the appliance init's `run`
# hook (fw_cfg opt/appliance/run). It serves ttyS1, which qemu connects to a unix socket of the
# harness: each line received is one shell command; its output goes back on ttyS1, followed by
# "AGENT-END status=<exit status>". Commands run with stdin from /dev/null so they cannot eat the
# next command. Runs in the background so init carries on.
(
    # Hold ttyS1 open before announcing readiness: a serial port nobody has open drops what
    # arrives, so a command sent right after AGENT-READY would otherwise be lost.
    exec </dev/ttyS1
    stty raw -echo 115200 || echo "AGENT-ERROR stty"
    echo AGENT-READY
    while IFS= read -r line; do
        eval "$line" </dev/null >/tmp/agent.out 2>&1
        status=$?
        cat /tmp/agent.out
        echo "AGENT-END status=$status"
    done >/dev/ttyS1
) &
