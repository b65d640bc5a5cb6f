"""Deploy targets that last beyond a workflow's job: `kubernetes` (a cluster) and `self-hosted` (a machine of your
own). Each deploys one image by digest, smoke-tests it where it serves, and puts the previous one back when the
new one fails; `common` holds what they share (the smoke test, the record, the job's outputs)."""
