"""`funcnet gradcheck --function FILE.py:NAME` and `--layer FILE.py:FACTORY` (in process)."""
from funcnet import cli

USER_CODE = '''
import jax
import funcnet as fn

square = jax.custom_vjp(lambda x: x ** 2)
square.defvjp(lambda x: (x ** 2, x), lambda x, g: (2 * x * g,))
wrong = jax.custom_vjp(lambda x: x ** 2)
wrong.defvjp(lambda x: (x ** 2, x), lambda x, g: (x * g,))


def my_layer():
    return fn.serial(fn.dense(3), fn.tanh)
'''


def test_function_and_layer_from_a_file(tmp_path, capsys):
    path = tmp_path / "ops.py"
    path.write_text(USER_CODE)
    assert cli.main(["gradcheck", "--function", f"{path}:square", "--args-shapes", "3,2"]) == 0
    assert "check_vjp PASS" in capsys.readouterr().out
    assert cli.main(["gradcheck", "--function", f"{path}:wrong", "--args-shapes", "4"]) == 1
    assert "arg0: FAIL at element" in capsys.readouterr().out
    assert cli.main(["gradcheck", "--layer", f"{path}:my_layer", "--input-shape", "2,4"]) == 0
    assert "check_layer PASS" in capsys.readouterr().out
    assert cli.main(["gradcheck", "--layer", f"{path}:nope", "--input-shape", "2,4"]) == 2
    assert "has no attribute 'nope'" in capsys.readouterr().err
    assert cli.main(["gradcheck", "--layer", f"{path}:my_layer"]) == 2
