"""How one notification leaves labqd: mail (the local MTA's sendmail, or an SMTP relay), a
user's webhook (a JSON POST that Slack, Mattermost and ntfy read), or the admin's command.

Each sender takes the message's payload and the channel's [notify.*] settings, and raises
ChannelError with a short reason that may be shown to anyone who reads the job's events: it
never quotes a webhook URL or the relay's password.
"""
from __future__ import annotations

import json
import os
import re
import signal
import smtplib
import ssl
import subprocess
import urllib.error
import urllib.request
from email.message import EmailMessage
from typing import Any

from labq.protocol import check_webhook_url
from labq.units import format_duration

from .config import NOTIFY_FIELDS

DEFAULT_TIMEOUT_S = 10
_FIELD = re.compile(r"\{(" + "|".join(NOTIFY_FIELDS) + r")\}")


class ChannelError(Exception):
    """A send that failed; `permanent` ones are not tried again."""

    def __init__(self, reason: str, permanent: bool = False):
        super().__init__(reason)
        self.permanent = permanent


def host_allowed(host: str, allowed: list[str]) -> bool:
    """`host` is one of the admin's names, or under a `*.domain` one."""
    for pattern in allowed:
        p = pattern.lower()
        if host == p or (p.startswith("*.") and host.endswith(p[1:])):
            return True
    return False


def summary(p: dict[str, Any]) -> tuple[str, str]:
    """A subject and a one-line text for the payload."""
    if p["event"] == "start":
        title = f"labq job {p['id']} ({p['name']}) started on {p['node']}"
        return title, title
    title = f"labq job {p['id']} ({p['name']}) {p['state']}"
    text = title + (f", exit code {p['exit_code']}" if p["exit_code"] is not None else "")
    if p["runtime"] is not None:
        text += f", after {format_duration(p['runtime'])}"
    return title, text + (f" on {p['node']}" if p["node"] else "")


def send(channel: str, target: str | None, payload: dict[str, Any],
         cfg: dict[str, Any]) -> None:
    settings = cfg.get(channel)
    if settings is None:
        raise ChannelError(f"the {channel} channel is no longer enabled in labqd's config",
                           permanent=True)
    timeout = settings.get("timeout", DEFAULT_TIMEOUT_S)
    if channel == "webhook":
        assert target is not None
        post_webhook(target, payload, settings["allow_hosts"], timeout)
    elif channel == "mail":
        assert target is not None
        send_mail(target, payload, settings, timeout)
    else:
        run_command(settings["argv"], payload, timeout)


def post_webhook(url: str, payload: dict[str, Any], allowed: list[str], timeout: float) -> None:
    # checked again at each send: the admin may have taken the host off the list since
    if not host_allowed(check_webhook_url(url), allowed):
        raise ChannelError("the webhook's host is not in notify.webhook.allow_hosts",
                           permanent=True)
    title, text = summary(payload)
    topic = url.rstrip("/").rsplit("/", 1)[-1]
    body = {"text": text,  # Slack and Mattermost
            "topic": topic, "title": title, "message": text,  # ntfy's JSON publishing
            "labq": payload}
    # ntfy publishes JSON as such only at its root URL; at a topic's URL (the one users
    # have) it shows the body as text unless told to fill title and message from it (its
    # templates, ntfy 2.10 and later). Slack and Mattermost ignore these headers.
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json",
                                          "User-Agent": "labqd", "X-Template": "yes",
                                          "X-Title": "{{.title}}",
                                          "X-Message": "{{.message}}"})
    # no redirects: a redirect could lead to a host the admin did not allow
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(req, timeout=timeout) as r:
            r.read(1 << 16)
    except urllib.error.HTTPError as e:
        raise ChannelError(f"webhook answered HTTP {e.code}",
                           permanent=400 <= e.code < 500 and e.code not in (408, 429)) from None
    except (urllib.error.URLError, OSError) as e:
        why = getattr(e, "reason", None) or e
        raise ChannelError(f"webhook unreachable: {str(why)[:200]}") from None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001
        raise urllib.error.HTTPError(req.full_url, code, "redirects are not followed", headers,
                                     fp)


def send_mail(address: str, payload: dict[str, Any], m: dict[str, Any],
              timeout: float) -> None:
    title, text = summary(payload)
    msg = EmailMessage()
    msg["Subject"] = title
    msg["From"] = m.get("from") or "labqd"
    msg["To"] = address
    msg.set_content(text + "\n\n" + "\n".join(f"{k}: {payload[k]}" for k in NOTIFY_FIELDS)
                    + "\n")
    if "sendmail" in m:
        try:
            r = subprocess.run([str(m["sendmail"]), "-t", "-oi"], input=msg.as_bytes(),
                               capture_output=True, timeout=timeout, env=_plain_env())
        except (OSError, subprocess.TimeoutExpired) as e:
            raise ChannelError(f"sendmail failed: {str(e)[:200]}") from None
        if r.returncode != 0:
            raise ChannelError(f"sendmail exited {r.returncode}: "
                               f"{r.stderr.decode(errors='replace').strip()[:200]}")
        return
    try:
        with smtplib.SMTP(m["smtp_host"], m.get("smtp_port", 25), timeout=timeout) as s:
            if m.get("starttls"):
                # smtplib's own default checks no certificate: anyone on the path could
                # take the relay's password
                s.starttls(context=ssl.create_default_context(cafile=m.get("ca_file")))
            if "username" in m:
                s.login(m["username"], _password(m))
            s.send_message(msg)
    except smtplib.SMTPRecipientsRefused:
        raise ChannelError("the mail relay refused the address", permanent=True) from None
    except (smtplib.SMTPException, OSError) as e:
        raise ChannelError(f"mail relay: {type(e).__name__}: {str(e)[:200]}") from None


def _password(m: dict[str, Any]) -> str:
    try:
        return str(open(m["password_file"]).read().strip())
    except OSError as e:
        raise ChannelError(f"cannot read notify.mail.password_file: {e.strerror}") from None


def command_argv(template: list[str], payload: dict[str, Any]) -> list[str]:
    """The admin's argv with {field}s filled in, each value inside the one argument that
    names it: no shell ever reads a job's name."""
    def value(m: re.Match[str]) -> str:
        v = payload[m.group(1)]
        return "" if v is None else str(v)
    return [_FIELD.sub(value, arg) for arg in template]


def run_command(template: list[str], payload: dict[str, Any], timeout: float) -> None:
    env = _plain_env()
    env.update({f"LABQ_{k.upper()}": "" if payload[k] is None else str(payload[k])
                for k in NOTIFY_FIELDS})
    env["LABQ_EVENT"] = payload["event"]
    try:
        # a session of its own, so that a timeout stops what the command started too
        proc = subprocess.Popen(command_argv(template, payload), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env=env, cwd="/", start_new_session=True)
    except OSError as e:
        raise ChannelError(f"the notify command could not start: {e.strerror}") from None
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise ChannelError(f"the notify command ran past its {timeout:g} s timeout") from None
    if code != 0:
        raise ChannelError(f"the notify command exited {code}")


def _plain_env() -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"), "LANG": "C.UTF-8"}
