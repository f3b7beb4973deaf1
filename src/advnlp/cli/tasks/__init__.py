"""One module per task: what the loss, the metrics, the prediction and the training step's
closure are for that kind of label. Sequence classification (single- and multi-label)
is :mod:`advnlp.cli.tasks.classify`; a new task is a new module beside it."""
