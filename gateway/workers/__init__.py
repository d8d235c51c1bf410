"""`gateway serve --workers N`: one supervisor, N worker processes on one listening socket.

- `spec`: what a worker needs to build the same settings as the command line did;
- `supervisor`: binds the socket once, starts, restarts and stops the workers;
- `worker`: the worker process (`python -m gateway.workers.worker`), uvicorn on the
  inherited socket;
- `channel` and `state_server`: the state the workers share without Redis (rate limits,
  budgets, detector state) and the control-plane messages they pass each other.
"""
