"""What the preview says an import will do to consent, and why, in the owner's words.

The figures come from the preview's dry run (upsert.plan_chunk counts each new contact's
status, and each existing contact the file's own opt-outs suppress); the reasons from
the chosen mode and the detected platform (profiles.Profile.evidence).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from audience.importing.profiles import GENERIC, Profile, proves_consent
from audience.models import ImportJob

_SUPPRESSED = ("unsubscribed", "bounced", "complained")


@dataclass(frozen=True)
class ConsentNote:
    subscribed: int  # new contacts subscribed on the file's evidence
    kept_unsubscribed: int  # the file's opt-outs: new ones stored suppressed, known ones moved
    stored: int  # new contacts stored without subscribing (and sent nothing)
    asked: int  # new contacts sent a double opt-in mail ("pending" mode)
    why: str  # the reason, in one paragraph


def consent_note(job: ImportJob, counts: Counter, profile: Profile) -> ConsentNote:
    mode = (job.options or {}).get("new_status", "file")
    kept = sum(counts[f"new_{s}"] + counts[f"moved_{s}"] for s in _SUPPRESSED)
    asked = counts["new_asked"]
    stored = counts["new_pending"] - asked
    return ConsentNote(
        subscribed=counts["new_subscribed"],
        kept_unsubscribed=kept,
        stored=stored,
        asked=asked,
        why=_why(mode, job, profile),
    )


def _why(mode: str, job: ImportJob, profile: Profile) -> str:
    kept = (
        "Rows the file marks as unsubscribed, cleaned, bounced or complained stay suppressed, "
        "and nobody who opted out is ever subscribed again by an import."
    )
    if mode == "pending":
        return (
            "You chose double opt-in: each new contact who did not decline is sent a "
            "confirmation email and stays pending until they click it. " + kept
        )
    if mode == "none":
        return (
            "You chose to store new contacts without subscribing: nobody is sent "
            "anything, whatever consent the file records. " + kept
        )
    if mode == "consent":
        return (
            "You chose to subscribe every row that carries consent evidence in any "
            "column (a consent column saying yes, or an opt-in, confirmation or consent "
            "time), on your word that it was collected; that evidence is kept on each "
            "contact's consent record. Rows without it are stored without subscribing. " + kept
        )
    if proves_consent(job.columns, job.mapping, profile):
        return (
            f"This is a {profile.label}, and it records each row's consent: "
            f"{profile.evidence}. Rows with that evidence are subscribed, and it is kept "
            "as their consent record; rows without it are stored without subscribing "
            "and sent nothing. " + kept
        )
    if profile is GENERIC or profile.key == GENERIC.key:
        reason = (
            "This spreadsheet comes from no platform Stillhere recognises, so its "
            "columns cannot prove anyone's consent"
        )
    elif not profile.evidence:
        reason = f"A {profile.label} records no email marketing consent"
    else:
        reason = (
            f"The consent columns of this {profile.label} were changed by hand, so they "
            "are no longer the platform's own record"
        )
    return (
        f"{reason}: new contacts are stored without subscribing and sent nothing. If you "
        "collected their consent yourself, choose “Subscribed, for rows that carry consent "
        "evidence”; to ask them, choose double opt-in. " + kept
    )
