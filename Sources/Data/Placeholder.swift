public enum _DataPlaceholder {}
