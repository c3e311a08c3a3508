"""The network IR: an immutable DAG in affine normal form (network, linear operators,
activations), and its torch evaluation."""
