"""The OpenAI Files and Batch API: uploaded JSONL files of requests, run later, in the
background, through the same pipeline as live requests.

- ``lines``: what a batch input file must hold, checked line by line at upload;
- ``ids``: ids of files and batches, in creation order; ``scope``: whose an object is;
- ``files``: the files (bytes under ``data_dir/files``, metadata in the database);
- ``batches``: batches, their lines and results, counts and status;
- ``intake``: a new batch's lines copied from its input file, a chunk per transaction;
- ``queue``: the ``JobQueue`` protocol lines are delivered through (at least once, with a
  lease), and its embedded implementation in the control-plane database;
- ``owner``: the identity a batch's lines run under;
- ``runner``: one line through ``InferenceService`` (transport ``batch``);
- ``finalize``: a finished, cancelled or expired batch into its output and error files;
- ``sweep``: expired files, orphan bytes and half-written files deleted;
- ``worker``: the in-process worker of ``autoglm serve`` that claims and runs lines;
- ``system``: the parts built once per app (``app.state.batch``).

HTTP routes: ``api/files.py``, ``api/batches.py``; who may see what: ``api/tenancy.py``.
"""
