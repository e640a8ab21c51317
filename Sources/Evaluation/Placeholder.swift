public enum _EvaluationPlaceholder {}
