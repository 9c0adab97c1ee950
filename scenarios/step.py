"""step: the offered rate rises in stages, for capacity search (where does backlog start to grow?).

The stage table is data: `--qb-steps` (tasks/s per stage) and `--qb-step-s` (seconds per stage). One
user holds the schedule and reads the current stage's rate on every arrival; the `LoadTestShape`
stops the run after the last stage.

    locust -f scenarios/step.py --host http://127.0.0.1:PORT --headless --qb-steps 10,20,40,80 --qb-step-s 10 \
        --qb-task sleep_ms --qb-args '{"ms": 50}'
"""

from locust import LoadTestShape

from openloop import OpenLoopUser


def stages(options) -> list[dict]:
    """[{"until_s": end of stage, "rate": tasks/s}, ...] from the command line options."""
    rates = [float(r) for r in options.qb_steps.split(",") if r.strip()]
    return [{"until_s": options.qb_step_s * (i + 1), "rate": rate} for i, rate in enumerate(rates)]


class StepShape(LoadTestShape):
    def tick(self):
        table = stages(self.runner.environment.parsed_options)
        run_time = self.get_run_time()
        if table and run_time < table[-1]["until_s"]:
            return (1, 1)
        return None


class StepUser(OpenLoopUser):
    def rate(self):
        table = stages(self.environment.parsed_options)
        shape = self.environment.shape_class
        run_time = shape.get_run_time() if shape is not None else 0.0
        for stage in table:
            if run_time < stage["until_s"]:
                return stage["rate"]
        return 0.0
