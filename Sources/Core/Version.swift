/// This build's version: `metatrain --version`, and in every run's run.json.
public let metatrainVersion = "0.10.0"
