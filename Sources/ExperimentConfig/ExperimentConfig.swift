// Module ExperimentConfig (the experiment configuration; named so beside swift-configuration's Configuration).
//
// The run configuration: defaults, the YAML file and `--set` overrides,
// validation with allowed values and nearest-key suggestions, the keys that may
// change on resume, and the documentation of every key (`metatrain config`,
// docs/CONFIG.md).
