/// Every configuration key and its default (docs/FORMATS.md, "Configuration"). A key not in this
/// tree is an error; a value must have the type of its default.
public let defaultConfigYAML = """
    seed: 20260107
    data:
      max_seq_len: 50
      k_support: 5
      q_query: 10
      session_gap_s: 1800
      min_item_count: 1
      val_fraction: 0.1
      test_fraction: 0.1
      train_stride: 1
      split: by_first_activity
      reliability:
        events_cap: 100
        duration_cap_s: 1800
    model:
      embedding_dim: 64
      hidden_dim: 128
      dropout: 0.2
    pretrain:
      epochs: 20
      batch_size: 256
      lr: 0.001
      patience: 3
    maml:
      algorithm: fomaml
      second_order: false
      inner_lr: 0.01
      inner_lr_bounds: [0.0001, 0.1]
      outer_lr: 0.001
      inner_steps: 5
      meta_batch_size: 32
      iterations: 3000
      residual_lambda: 0.0
      clip_norm: 10.0
      chunk_size: 4
    weighting:
      scheme: uniform
      recency:
        kind: exponential
        lambda: 0.5
        temperature: 1.0
    warm_start:
      checkpoint: null
      freeze_embeddings: false
    eval:
      every: 100
      patience: 10
      val_episodes: 0
      bootstrap_samples: 1000
      sampled_negatives: 0
    checkpoint:
      every: 100
      keep: 3
    cluster:
      heartbeat_s: 1.0
      liveness: 3
    """
