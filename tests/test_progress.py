"""Progress off a terminal: no bar redraws in a log, one line per epoch; on a terminal, tqdm's bar."""
import io

import torch

import modefuse as mf
from modefuse import progress


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_bar_is_drawn_on_a_terminal_only():
    tty, log = _Terminal(), io.StringIO()
    for x in progress.bar(range(50), desc="work", file=tty, mininterval=0):
        pass
    for x in progress.bar(range(50), desc="work", file=log):
        pass
    assert "work" in tty.getvalue() and "\r" in tty.getvalue()
    assert log.getvalue() == ""
    assert progress.bar(range(3), file=tty, enabled=False).disable
    assert not progress.on_terminal(log) and progress.on_terminal(tty)


def test_training_off_a_terminal_prints_one_line_per_epoch(capsys):
    g = torch.Generator().manual_seed(0)
    data = mf.data.ImageDataset(torch.randint(0, 256, (600, 1, 28, 28), dtype=torch.uint8, generator=g),
                                torch.arange(600) % 10, "tiny", "train")
    mf.train(mf.models.build("mlp", widths=[8], seed=0), data, epochs=3, batch_size=16)  # 38 batches an epoch
    out, err = capsys.readouterr()
    assert "\r" not in out + err and err == ""
    assert [line.split(":")[0] for line in out.splitlines()] == ["epoch 1", "epoch 2", "epoch 3"]
