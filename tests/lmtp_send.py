#!/usr/bin/env python3
"""An LMTP client written by nobody here: Python's smtplib.LMTP delivers one message.

Usage: lmtp_send.py HOST PORT MAIL_FROM RCPT [RCPT...] < message
Prints one JSON object: {"lhlo": code, "mail": [code, text], "rcpt": [[code, text], ...],
"data": [code, text] or null}. DATA is sent when at least one recipient was accepted;
smtplib reads one reply to it, so tests give one accepted recipient per transaction.
"""
import json
import smtplib
import sys

host, port, mail_from, *rcpts = sys.argv[1:]
message = sys.stdin.buffer.read()
client = smtplib.LMTP(host, int(port))
out = {}
code, _ = client.ehlo()  # smtplib.LMTP says LHLO here
out["lhlo"] = code
code, text = client.mail(mail_from)
out["mail"] = [code, text.decode()]
out["rcpt"] = []
for rcpt in rcpts:
    code, text = client.rcpt(rcpt)
    out["rcpt"].append([code, text.decode()])
out["data"] = None
if any(c == 250 for c, _ in out["rcpt"]):
    code, text = client.data(message)
    out["data"] = [code, text.decode()]
try:
    client.quit()
except smtplib.SMTPException:
    pass
print(json.dumps(out))
