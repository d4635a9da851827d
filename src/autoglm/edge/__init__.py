"""Edge nodes: an installation that serves from a copy of its centre's identities and
hands its audit records on to the centre (``link``, at the edge), and the centre's side
(``snapshot`` export, ``inbox`` of forwarded records)."""
