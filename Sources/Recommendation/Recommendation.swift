/// One learner's events to next courses: the learner's pairs as prepare makes them, adapted
/// with evaluation's few-shot path, the catalogue ranked for the latest prefix.
