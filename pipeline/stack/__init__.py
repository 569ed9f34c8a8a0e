"""The deployed topology without Docker: PostgreSQL -> ``mlflow server`` -> the prediction API.

- :mod:`pipeline.stack.local`: :func:`~pipeline.stack.local.local_stack`, the whole topology as a
  context manager (tests, scripts);
- :mod:`pipeline.stack.postgres`: a throw-away or durable PostgreSQL cluster from Debian's binaries;
- :mod:`pipeline.stack.processes`: child processes in their own process groups, always stopped;
- :mod:`pipeline.stack.mlflow_app`: the ``ecg`` MLflow app (``mlflow server --app-name ecg``), whose
  UI opens experiments on the runs table;
- ``python -m pipeline.stack`` (``make stack``, :mod:`pipeline.stack.__main__`): keep it up for a
  person until Ctrl-C.
"""
