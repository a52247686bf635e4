"""Tracking webhooks as each provider posts them, in its own format, authenticated the way
config/webhooks.py mounts it (Mailgun's HMAC signature, basic auth for the others), posted
through anymail's real tracking views.

Each provider has the same vocabulary (delivered, deferred, soft and hard bounces,
complaint, open, click) so one scenario can run through all of them. ``post`` returns
the response; posting the same body twice is exactly what a provider's retry does.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import uuid
from dataclasses import dataclass

SECRET = "stillhere:webhook-secret-for-tests"
MAILGUN_KEY = "mailgun-webhook-signing-key-for-tests"
T0 = dt.datetime(2026, 12, 7, 10, 0, tzinfo=dt.UTC)


def at(minutes: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


def _iso(when: dt.datetime) -> str:
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _basic() -> dict:
    return {"HTTP_AUTHORIZATION": "Basic " + base64.b64encode(SECRET.encode()).decode()}


@dataclass
class Posted:
    """One webhook post, ready to send (again)."""

    url: str
    body: str
    headers: dict

    def post(self, client):
        return client.post(self.url, self.body, content_type="application/json", **self.headers)


def anymail_settings() -> dict:
    return {"WEBHOOK_SECRET": SECRET, "MAILGUN_WEBHOOK_SIGNING_KEY": MAILGUN_KEY}


# Every builder: (kind, email, message_id, campaign_id, when, url=None) -> Posted. kind is
# one of delivered, deferred, soft_bounce, hard_bounce, complained, opened, clicked.


class Postmark:
    name = "postmark"
    has_deferred = True

    @staticmethod
    def message_id(n: int) -> str:
        return str(uuid.UUID(int=0x883953F4_6105_42A2_A16A_000000000000 + n))

    @staticmethod
    def event(kind, email, mid, campaign_id, when, url=None) -> Posted:
        meta = {"campaign": str(campaign_id)}
        common = {"MessageID": mid, "MessageStream": "outbound", "Metadata": meta, "Tag": ""}
        bounce = {"RecordType": "Bounce", "ID": abs(hash((mid, kind))) % 10**12,
                  "ServerID": 23, "Email": email, "From": "shop@example.com",
                  "BouncedAt": _iso(when), "DumpAvailable": False, "CanActivate": True,
                  "Subject": "We're still here"}  # fmt: skip
        client = {"Client": {"Name": "Chrome 120", "Company": "Google", "Family": "Chrome"},
                  "OS": {"Name": "macOS", "Company": "Apple", "Family": "OS X"},
                  "Geo": {"CountryISOCode": "DE", "Country": "Germany"},
                  "UserAgent": "Mozilla/5.0 (Macintosh) Chrome/120.0", "Recipient": email,
                  "ReceivedAt": _iso(when)}  # fmt: skip
        body = {
            "delivered": {"RecordType": "Delivery", "ServerID": 23, "Recipient": email,
                          "DeliveredAt": _iso(when), "Details": "smtp;250 2.0.0 OK"},
            "deferred": {**bounce, "Type": "Transient", "TypeCode": 2, "Name": "Message delayed",
                         "Description": "The server could not temporarily deliver your message.",
                         "Details": "smtp;421 4.7.0 Try again later", "Inactive": False},
            "soft_bounce": {**bounce, "Type": "SoftBounce", "TypeCode": 4096,
                            "Name": "Soft bounce", "Inactive": False,
                            "Description": "Unable to temporarily deliver this email.",
                            "Details": "smtp;452 4.2.2 Mailbox full"},
            "hard_bounce": {**bounce, "Type": "HardBounce", "TypeCode": 1, "Name": "Hard bounce",
                            "Inactive": True, "Description": "The server was unable to deliver "
                            "your message (ex: unknown user, mailbox not found).",
                            "Details": "smtp;550 5.1.1 The email account does not exist"},
            "complained": {**bounce, "RecordType": "SpamComplaint", "Type": "SpamComplaint",
                           "TypeCode": 512, "Name": "Spam complaint", "Inactive": True,
                           "Description": "The subscriber explicitly marked this message as "
                           "spam.", "Details": ""},
            "opened": {"RecordType": "Open", "FirstOpen": True, "Platform": "WebMail",
                       "ReadSeconds": 5, **client},
            "clicked": {"RecordType": "Click", "ClickLocation": "HTML", "Platform": "Desktop",
                        "OriginalLink": url, **client},
        }[kind]  # fmt: skip
        return Posted("/anymail/postmark/tracking/", json.dumps({**common, **body}), _basic())


class Mailgun:
    name = "mailgun"
    has_deferred = False  # Mailgun reports a temporary failure ("failed", temporary)

    @staticmethod
    def message_id(n: int) -> str:
        # As Mailgun's send API answers (and the sender stores): in angle brackets.
        return f"<20261207100000.{n}.5F3B1C@mg.example.com>"

    @staticmethod
    def event(kind, email, mid, campaign_id, when, url=None) -> Posted:
        stamp = when.timestamp()
        data = {"id": uuid.uuid4().hex[:22], "timestamp": stamp, "recipient": email,
                "recipient-domain": email.split("@")[1], "tags": [],
                "user-variables": {"campaign": str(campaign_id)},
                "envelope": {"sender": "shop@mg.example.com", "transport": "smtp"},
                # The webhook's message-id header has no angle brackets.
                "message": {"headers": {"message-id": mid.strip("<>"), "to": email,
                                        "from": "shop@example.com",
                                        "subject": "We're still here"},
                            "size": 2114}}  # fmt: skip
        status = {"tls": True, "mx-host": "mx.example.net", "attempt-no": 1}
        data |= {
            "delivered": {"event": "delivered",
                          "delivery-status": {**status, "code": 250, "message": "OK",
                                              "description": ""}},
            "soft_bounce": {"event": "failed", "severity": "temporary", "reason": "generic",
                            "delivery-status": {**status, "code": 452,
                                                "message": "4.2.2 Mailbox full",
                                                "description": ""}},
            "hard_bounce": {"event": "failed", "severity": "permanent", "reason": "bounce",
                            "delivery-status": {**status, "code": 550,
                                                "message": "5.1.1 No such user",
                                                "description": ""}},
            "complained": {"event": "complained"},
            # Mailgun refused to send it at all (a policy, a suppression it keeps).
            "rejected": {"event": "rejected",
                         "reject": {"reason": "Sending disabled for this domain",
                                    "description": ""}},
            "opened": {"event": "opened", "client-info": {"client-type": "browser",
                                                          "user-agent": "Mozilla/5.0"}},
            "clicked": {"event": "clicked", "url": url,
                        "client-info": {"client-type": "browser", "user-agent": "Mozilla/5.0"}},
        }[kind]  # fmt: skip
        timestamp, token = str(int(stamp)), uuid.uuid4().hex + uuid.uuid4().hex[:18]
        signature = hmac.new(
            MAILGUN_KEY.encode(), (timestamp + token).encode(), hashlib.sha256
        ).hexdigest()
        body = {
            "signature": {"timestamp": timestamp, "token": token, "signature": signature},
            "event-data": data,
        }
        # With ANYMAIL_WEBHOOK_SECRET set too, anymail also wants it on Mailgun's posts
        # (the credentials in the webhook URL), on top of the signature.
        return Posted("/anymail/mailgun/tracking/", json.dumps(body), _basic())


class AmazonSES:
    name = "amazon_ses"
    has_deferred = False

    @staticmethod
    def message_id(n: int) -> str:
        return f"0100018c3b7e{n:04x}-6c1f2b2a-93f4-4ad4-9a1c-0f5d1c2e3b4a-000000"

    @staticmethod
    def event(kind, email, mid, campaign_id, when, url=None) -> Posted:
        mail = {"timestamp": _iso(when - dt.timedelta(seconds=3)), "source": "shop@example.com",
                "sourceArn": "arn:aws:ses:us-east-1:123456789012:identity/example.com",
                "sendingAccountId": "123456789012", "messageId": mid, "destination": [email],
                "headersTruncated": False,
                # anymail's SES backend carries metadata in this header.
                "headers": [{"name": "From", "value": "shop@example.com"},
                            {"name": "To", "value": email},
                            {"name": "X-Metadata",
                             "value": json.dumps({"campaign": str(campaign_id)})}],
                "tags": {"ses:configuration-set": ["stillhere"]}}  # fmt: skip
        bounce = {"feedbackId": uuid.uuid4().hex, "timestamp": _iso(when),
                  "reportingMTA": "dsn; a8-70.smtp-out.amazonses.com"}  # fmt: skip
        event = {
            "delivered": {"eventType": "Delivery",
                          "delivery": {"timestamp": _iso(when), "processingTimeMillis": 546,
                                       "recipients": [email],
                                       "smtpResponse": "250 2.6.0 Message received",
                                       "reportingMTA": "a8-70.smtp-out.amazonses.com"}},
            "soft_bounce": {"eventType": "Bounce",
                            "bounce": {**bounce, "bounceType": "Transient",
                                       "bounceSubType": "MailboxFull",
                                       "bouncedRecipients": [
                                           {"emailAddress": email, "action": "failed",
                                            "status": "4.2.2",
                                            "diagnosticCode": "smtp; 452 4.2.2 Mailbox full"}]}},
            "hard_bounce": {"eventType": "Bounce",
                            "bounce": {**bounce, "bounceType": "Permanent",
                                       "bounceSubType": "General",
                                       "bouncedRecipients": [
                                           {"emailAddress": email, "action": "failed",
                                            "status": "5.1.1",
                                            "diagnosticCode": "smtp; 550 5.1.1 user unknown"}]}},
            "complained": {"eventType": "Complaint",
                           "complaint": {"complainedRecipients": [{"emailAddress": email}],
                                         "timestamp": _iso(when), "feedbackId": "f1",
                                         "complaintFeedbackType": "abuse"}},
            "opened": {"eventType": "Open",
                       "open": {"ipAddress": "192.0.2.1", "timestamp": _iso(when),
                                "userAgent": "Mozilla/5.0"}},
            "clicked": {"eventType": "Click",
                        "click": {"ipAddress": "192.0.2.1", "timestamp": _iso(when),
                                  "userAgent": "Mozilla/5.0", "link": url,
                                  "linkTags": {}}},
        }[kind]  # fmt: skip
        sns_id = str(uuid.uuid4())
        # SNS stamps the notification when it publishes it, the event's own time.
        sns = {"Type": "Notification", "MessageId": sns_id,
               "TopicArn": "arn:aws:sns:us-east-1:123456789012:stillhere-tracking",
               "Subject": "Amazon SES Email Event Notification",
               "Message": json.dumps({**event, "mail": mail}), "Timestamp": _iso(when),
               "SignatureVersion": "1", "Signature": "EXAMPLEpH+..",
               "SigningCertURL": "https://sns.us-east-1.amazonaws.com/"
                                 "SimpleNotificationService-0000.pem",
               "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe"
               }  # fmt: skip
        headers = {**_basic(), "HTTP_X_AMZ_SNS_MESSAGE_TYPE": "Notification",
                   "HTTP_X_AMZ_SNS_MESSAGE_ID": sns_id,
                   "HTTP_X_AMZ_SNS_TOPIC_ARN": sns["TopicArn"]}  # fmt: skip
        return Posted("/anymail/amazon_ses/tracking/", json.dumps(sns), headers)


class Brevo:
    name = "brevo"
    has_deferred = True

    @staticmethod
    def message_id(n: int) -> str:
        return f"<202612071000.{n:08d}@smtp-relay.mailin.fr>"

    @staticmethod
    def event(kind, email, mid, campaign_id, when, url=None) -> Posted:
        ms = int(when.timestamp() * 1000)
        body = {"id": 1234567, "email": email, "date": when.strftime("%Y-%m-%d %H:%M:%S"),
                "ts": ms // 1000, "ts_event": ms // 1000, "ts_epoch": ms, "message-id": mid,
                "subject": "We're still here", "tag": "", "sending_ip": "185.41.28.109",
                "X-Mailin-custom": json.dumps({"campaign": str(campaign_id)})}  # fmt: skip
        body |= {
            "delivered": {"event": "delivered"},
            "deferred": {"event": "deferred", "reason": "421 4.7.0 Try again later"},
            "soft_bounce": {"event": "soft_bounce", "reason": "452 4.2.2 Mailbox full"},
            "hard_bounce": {"event": "hard_bounce", "reason": "550 5.1.1 User unknown"},
            "complained": {"event": "spam"},
            "opened": {"event": "unique_opened"},
            "clicked": {"event": "click", "link": url},
        }[kind]
        return Posted("/anymail/brevo/tracking/", json.dumps(body), _basic())


class SparkPost:
    name = "sparkpost"
    has_deferred = True

    @staticmethod
    def message_id(n: int) -> str:
        return str(7000000000000000000 + n)  # the transmission id anymail reports

    @staticmethod
    def event(kind, email, mid, campaign_id, when, url=None) -> Posted:
        event = {"event_id": str(uuid.uuid4().int)[:17], "timestamp": str(int(when.timestamp())),
                 "transmission_id": mid, "message_id": "0e5f7d2a6e5b4c3d2a10",
                 "raw_rcpt_to": email, "rcpt_to": email.lower(), "rcpt_type": "to",
                 "rcpt_meta": {"campaign": str(campaign_id)}, "rcpt_tags": [],
                 "customer_id": "12345", "subaccount_id": 0, "campaign_id": "",
                 "friendly_from": "shop@example.com", "subject": "We're still here",
                 "ip_address": "192.0.2.9", "sending_ip": "198.51.100.4",
                 "routing_domain": email.split("@")[1]}  # fmt: skip
        key, extra = {
            "delivered": ("message_event", {"type": "delivery", "queue_time": "1200",
                                            "num_retries": "0", "raw_reason": "250 2.0.0 OK"}),
            "deferred": ("message_event", {"type": "delay", "bounce_class": "21",
                                           "num_retries": "1",
                                           "raw_reason": "421 4.4.0 [internal] DNS failure"}),
            "soft_bounce": ("message_event", {"type": "bounce", "bounce_class": "22",
                                              "raw_reason": "452 4.2.2 Mailbox full",
                                              "error_code": "452"}),
            "hard_bounce": ("message_event", {"type": "bounce", "bounce_class": "10",
                                              "raw_reason": "550 5.1.1 User unknown",
                                              "error_code": "550"}),
            "complained": ("message_event", {"type": "spam_complaint", "fbtype": "abuse",
                                             "report_by": "server.example.net"}),
            "opened": ("track_event", {"type": "open", "user_agent": "Mozilla/5.0"}),
            "clicked": ("track_event", {"type": "click", "user_agent": "Mozilla/5.0",
                                        "target_link_url": url,
                                        "target_link_name": "shop"}),
        }[kind]  # fmt: skip
        body = [{"msys": {key: {**event, **extra}}}]
        return Posted("/anymail/sparkpost/tracking/", json.dumps(body), _basic())


class Resend:
    name = "resend"
    has_deferred = True

    @staticmethod
    def message_id(n: int) -> str:
        return str(uuid.UUID(int=0x56761188_7520_42D8_8898_000000000000 + n))

    @staticmethod
    def event(kind, email, mid, campaign_id, when, url=None) -> Posted:
        # No metadata here: Resend's events are found by the email id the send API gave.
        data = {"created_at": (when - dt.timedelta(seconds=3)).isoformat(), "email_id": mid,
                "from": "Shop <shop@example.com>", "to": [email],
                "subject": "We're still here"}  # fmt: skip
        soft = "The recipient's email provider sent a bounce message because the inbox was full."
        hard = "The recipient's email provider sent a hard bounce message, and Resend has added "
        kind_type, extra = {
            "delivered": ("email.delivered", {}),
            "deferred": ("email.delivery_delayed", {}),
            "soft_bounce": ("email.bounced", {"bounce": {"message": soft, "subType": "MailboxFull",
                                                         "type": "Transient"}}),
            "hard_bounce": ("email.bounced", {"bounce": {"message": hard + "it to a list.",
                                                         "subType": "General",
                                                         "type": "Permanent"}}),
            "complained": ("email.complained", {}),
            "opened": ("email.opened", {}),
            "clicked": ("email.clicked", {"click": {"ipAddress": "192.0.2.1", "link": url,
                                                    "timestamp": _iso(when),
                                                    "userAgent": "Mozilla/5.0"}}),
        }[kind]  # fmt: skip
        body = {"type": kind_type, "created_at": _iso(when), "data": {**data, **extra}}
        svix = f"msg_{uuid.uuid4().hex[:27]}"
        headers = {**_basic(), "HTTP_SVIX_ID": svix,
                   "HTTP_SVIX_TIMESTAMP": str(int(when.timestamp())),
                   "HTTP_SVIX_SIGNATURE": "v1,unused-basic-auth-is-configured"}  # fmt: skip
        return Posted("/anymail/resend/tracking/", json.dumps(body), headers)


PROVIDERS = [Postmark, Mailgun, AmazonSES, Brevo, SparkPost, Resend]
