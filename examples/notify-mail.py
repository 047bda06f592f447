#!/usr/bin/python3
"""failover-agent [[notify]] hook: mail the event, or post it to a webhook as JSON.

The agent runs this with the event in the environment (FAILOVER_EVENT, FAILOVER_MESSAGE,
FAILOVER_VRID, FAILOVER_INTERFACE, FAILOVER_<FIELD> for every journal field; see README.md,
"Alerts"). Its exit code changes nothing in the agent; a failure shows up in the journal as a
warning naming this script and why.

Install it on both nodes and wire it in /etc/failover-agent/agent.toml:

    install -m 0755 examples/notify-mail.py /usr/local/lib/failover-agent/notify-mail.py

    # mail through the local MTA (/usr/sbin/sendmail: postfix, exim, nullmailer, msmtp-mta...)
    [[notify]]
    argv = ["/usr/local/lib/failover-agent/notify-mail.py", "--mail", "ops@example.org"]
    events = ["serving", "released", "fault", "fence"]
    timeout = 15

    # or POST {"text": ..., "event": ..., "fields": {...}} to a webhook (Slack, Mattermost,
    # Matrix bridges, ntfy...). Its URL usually holds a token: keep it in a root-only file,
    # not in agent.toml and never in a repository:
    #   install -m 0600 /dev/null /etc/failover-agent/webhook.url && editor /etc/failover-agent/webhook.url
    [[notify]]
    argv = ["/usr/local/lib/failover-agent/notify-mail.py", "--webhook-file", "/etc/failover-agent/webhook.url"]
    events = ["transition", "fault", "fence", "track"]
    timeout = 10

Then `failoverctl check-config` and `systemctl reload failover-agent` (hooks change live).
Try it by hand: FAILOVER_EVENT=fault FAILOVER_MESSAGE=test ./notify-mail.py --mail you@example.org
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from email.message import EmailMessage

PREFIX = "FAILOVER_"


def event_vars() -> dict[str, str]:
    return {k[len(PREFIX):].lower(): v for k, v in sorted(os.environ.items()) if k.startswith(PREFIX)}


def subject(ev: dict[str, str], host: str) -> str:
    state = f" ({ev['vrrp_state']})" if "vrrp_state" in ev else ""
    return f"[failover-agent] {host}: {ev.get('event', '?')}{state}: {ev.get('message', '')[:100]}"


def body(ev: dict[str, str], host: str) -> str:
    lines = [ev.get("message", ""), "", f"host: {host}"]
    lines += [f"{k}: {v}" for k, v in ev.items() if k != "message"]
    return "\n".join(lines) + "\n"


def send_mail(to: list[str], sender: str | None, sendmail: str, ev: dict[str, str], host: str) -> None:
    if not os.access(sendmail, os.X_OK):
        sys.exit(f"{sendmail} not found: install an MTA (e.g. nullmailer) or use --webhook-file")
    msg = EmailMessage()
    msg["Subject"] = subject(ev, host)
    msg["To"] = ", ".join(to)
    msg["From"] = sender or f"failover-agent@{host}"
    msg.set_content(body(ev, host))
    # -t: recipients from the headers, -oi: a line with a single dot does not end the message
    done = subprocess.run([sendmail, "-t", "-oi"], input=msg.as_bytes(), capture_output=True, timeout=30)
    if done.returncode != 0:
        sys.exit(f"{sendmail} exit {done.returncode}: {done.stderr.decode(errors='replace').strip()[:200]}")


def post_webhook(url_file: str, ev: dict[str, str], host: str) -> None:
    try:
        with open(url_file, encoding="utf-8") as f:
            url = f.read().strip()
    except OSError as e:
        sys.exit(f"cannot read the webhook URL from {url_file}: {e.strerror}")
    if not url.startswith(("https://", "http://")):
        sys.exit(f"{url_file} does not hold an http(s) URL")
    data = json.dumps({"text": subject(ev, host), "event": ev.get("event"), "host": host, "fields": ev}).encode()
    req = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=8) as answer:
            answer.read(4096)
    except OSError as e:  # URLError and HTTPError are OSErrors; the URL itself is not printed (a token)
        sys.exit(f"webhook POST failed: {getattr(e, 'reason', e)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mail", action="append", default=[], metavar="ADDRESS", help="recipient (repeatable)")
    ap.add_argument("--from", dest="sender", help="sender address (default failover-agent@HOST)")
    ap.add_argument("--sendmail", default="/usr/sbin/sendmail", help="the MTA's sendmail (default %(default)s)")
    ap.add_argument("--webhook-file", help="a file holding the webhook URL (root-only: it is a secret)")
    args = ap.parse_args()
    if not args.mail and not args.webhook_file:
        ap.error("give --mail ADDRESS, --webhook-file FILE, or both")
    ev, host = event_vars(), socket.gethostname()
    failed: list[str] = []  # one broken channel must not silence the other
    channels: list[Callable[[], None]] = []
    if args.mail:
        channels.append(lambda: send_mail(args.mail, args.sender, args.sendmail, ev, host))
    if args.webhook_file:
        channels.append(lambda: post_webhook(args.webhook_file, ev, host))
    for send in channels:
        try:
            send()
        except SystemExit as e:
            failed.append(str(e.code))
    if failed:
        sys.exit("; ".join(failed))


if __name__ == "__main__":
    main()
