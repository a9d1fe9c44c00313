#!/usr/bin/env python3
"""A real SMTP server for the e-mail tests: aiosmtpd (written by nobody here) on 127.0.0.1.

Usage: smtp_sink.py [PORT] [--refuse]
Prints {"port": N} once listening, then one JSON line per message received:
{"mail_from": ..., "rcpt_tos": [...], "data": "<the message as received>"}.
With --refuse every message is answered "550 5.7.1" (a permanent refusal).
Exits when its standard input closes, so it never outlives the test that started it.
"""
import asyncio
import json
import sys

from aiosmtpd.smtp import SMTP


class Handler:
    def __init__(self, refuse):
        self.refuse = refuse

    async def handle_DATA(self, server, session, envelope):
        if self.refuse:
            return "550 5.7.1 refused by the test sink"
        content = envelope.content
        if isinstance(content, bytes):
            content = content.decode("utf-8", "replace")
        print(json.dumps({
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "data": content,
        }), flush=True)
        return "250 2.0.0 OK"


async def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    port = int(args[0]) if args else 0
    handler = Handler("--refuse" in sys.argv)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(handler), "127.0.0.1", port)
    print(json.dumps({"port": server.sockets[0].getsockname()[1]}), flush=True)
    await loop.run_in_executor(None, sys.stdin.read)
    server.close()


asyncio.run(main())
