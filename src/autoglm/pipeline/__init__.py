"""The inference pipeline: one transport-free service that every front end calls.

HTTP handlers, the gRPC servicer and batch workers turn what they received into an
``InferenceRequest`` and a ``RequestContext``, and call ``InferenceService.open``. The
request then passes the ordered stages of ``pipeline/stages`` (authenticate, authorize,
validate, admission, engine, accounting, ...), whichever engine serves the model.
"""
