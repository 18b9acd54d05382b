"""The FINDINGS section of a MIMIC-CXR free-text report.

A report is a sequence of sections, each opened by an all-caps header and a colon at the start
of a line (after optional blanks), as MIT-LCP's ``section_parser`` for MIMIC-CXR reads them::

                                     FINAL REPORT
     EXAMINATION:  CHEST (PA AND LAT)
     INDICATION:  ___F with cough
     FINDINGS:
     The lungs are clear.  No pleural effusion or pneumothorax.
     IMPRESSION:  No acute cardiopulmonary process.

The findings are the text after ``FINDINGS:`` up to the next header (``IMPRESSION:``,
``RECOMMENDATION(S):``, ``NOTIFICATION:``, ...) or the end, whitespace collapsed to single
spaces. A report without that header, or with nothing under it, has no findings (``None``).
Decisions: only ``FINDINGS`` (or ``FINDING``) opens the section; a combined ``FINDINGS AND
IMPRESSION:`` header does not (MIT-LCP's parser files it under impression). With several
``FINDINGS:`` headers the first is taken. Text is never lowercased or otherwise changed here.
"""

from __future__ import annotations

import re

FINDINGS_HEADERS = frozenset({"FINDINGS", "FINDING"})

_HEADER = re.compile(r"^[ \t]*([A-Z][A-Z ()/,&'-]*[A-Z)])[ \t]*:(?=\s|$)", re.MULTILINE)
"""An all-caps header of two or more characters, then a colon followed by a blank or the end of a line."""

PARSER = "findings_section/1"
"""Names these rules in the builds' identities; bump it when they change."""


def extract_findings(report: str) -> str | None:
    """The FINDINGS section of ``report``, whitespace collapsed; None when it has none (or an empty one)."""
    headers = list(_HEADER.finditer(report))
    for position, header in enumerate(headers):
        if " ".join(header.group(1).split()) in FINDINGS_HEADERS:
            end = headers[position + 1].start() if position + 1 < len(headers) else len(report)
            text = " ".join(report[header.end():end].split())
            return text or None
    return None
