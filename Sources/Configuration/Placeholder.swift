public enum _ConfigurationPlaceholder {}
