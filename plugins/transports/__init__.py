"""The bundled transports: ``pickup`` (write into a folder), ``smtp`` (a server list), ``mx`` (direct, with smart host).

``smtp`` and ``mx`` share one SMTP client: ``smtpclient`` (settings, reply mapping),
``smtpsession`` (one session and its transaction), ``smtppool`` (endpoints in order, reuse).
"""
