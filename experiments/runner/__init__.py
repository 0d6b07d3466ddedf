r"""The experiment runner: what the commands in experiments/ call.

One concern per module. Imports go one way, downwards in this diagram (a
module imports only modules above it, named after "<-"; none imports inside
a function):

  errors       ConfigError, DataError, DivergenceError, CheckpointError
  sharding     device mesh, placement, multi-process helpers
  metrics      scalars to console, TensorBoard, metrics.jsonl
  images       PNG grids
  factories    routing, kernels, optimizer, schedules, CD options
  config       validation, front-end fields, load_config   <- errors
  harness      workdir, config record, checkpoint writes,  <- errors
               SIGTERM flag, exit_on_error (every main)
  data         Data, load_data, batch_indices, batched     <- config, sharding
  visible      the FrontEnd interface, patches, marginals, <- config, data
               binarized capsules, decoding
  state        keys, initial/abstract state, shardings     <- factories,
                                                              visible
  checkpoints  workdir config check, restore (0.1          <- state, harness
               migration, missing fields), roll-back
  models/      common <- classifier, autoencoder           <- data, harness
  front_ends   get(config) -> FrontEnd; load_run(workdir)  <- checkpoints,
               (a "layer" front end loads the run below       models
               with load_run: recursion in this module)
  update       the jitted CD update, finiteness            <- state
  monitors     training monitors, samplers, sample figure  <- visible
  loop         train_and_evaluate                          <- all above
  evaluation/  capsules, likelihood, probes <- diversity   <- visible,
               <- frechet <- report <- suite (evaluate)       models
  diagram/     drawing <- figure (the routing diagram)     <- visible
  baselines/   sklearn_rbm (a BernoulliRBM as a run),      <- front_ends
               bars_and_stripes (self-contained)

From a config to a checkpoint the way is one-directional: config ->
factories -> state (given a FrontEnd object) -> checkpoints -> front_ends.
The front end is built once (front_ends.get, cached per workdir and
checkpoint) and handed down as an argument; nothing below front_ends
builds one from a config.
"""
