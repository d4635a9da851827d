"""``autoglm compliance``: a signed report mapping MLPS 2.0 (GB/T 22239-2019, level 3),
GDPR and PIPL controls to live evidence of this installation.

``catalogue.yaml`` lists the controls (data); ``evidence`` reads the installation;
``checks`` judges each control; ``report`` puts it together; ``render`` writes JSON or
printable HTML; ``signing`` signs the file with the audit checkpoint key (Ed25519) and
verifies it offline. The report supports an assessment; it does not replace one.
"""
