public enum _TrainingPlaceholder {}
