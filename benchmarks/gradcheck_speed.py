"""Seconds for the gradient check `python -m funcnet train` runs before training (LeNet on
digits, 4 examples, float64, train mode), in a fresh process (compilation included).

    python -m benchmarks.gradcheck_speed
"""
import time


def main():
    t0 = time.perf_counter()
    import optax

    from funcnet import cli
    (x, y), _ = cli.load_data("digits", 0)
    model = cli._build("lenet", x, y)
    ts = cli._init(model, optax.identity(), (32,) + x.shape[1:], 0)
    t1 = time.perf_counter()
    report = cli.gradient_check(model, ts.params, ts.state, x[:4], y[:4], seed=0)
    t2 = time.perf_counter()
    print(report.summary())
    print(f"setup {t1 - t0:.1f} s, gradient check {t2 - t1:.1f} s")


if __name__ == "__main__":
    main()
