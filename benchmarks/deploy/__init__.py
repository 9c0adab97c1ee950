"""Deployments on several hosts, named by role in an Ansible inventory (``queuebench run MATRIX --inventory FILE``).

- `inventory`: the inventory read through Ansible's own parser (``ansible-inventory --list``), its roles and
  ``qb_*`` host variables checked with errors that name the role or key, before anything starts.
- `plan`: what each host runs for one cell (the broker, the workers with each library's own CLI, the API under
  gunicorn, Locust, a clock responder): command lines and environments as data for the playbooks.
- `driver`: runs the playbooks in ``playbooks/`` with ansible-runner (install, start, load, progress, stop and
  collect); processes on the hosts are daemonized with start-stop-daemon, never Ansible async tasks.
- `host`: what runs on a host under Ansible (stop a daemon's whole session, report ledger progress, time and
  wait for the broker's round trip, write the ledger manifest); the standard library, psutil, redis-py and pika.
- `manifest`: each host's ledger manifest (rows, sha256, first and last timestamp per file) and its check.
- `cell`: one matrix cell measured on an inventory, through the same store, measure and verdicts as a local run.
"""
