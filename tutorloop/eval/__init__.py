"""Measuring the student: the one grading function (grading.py), statistics — Wilson intervals,
the exact McNemar test (stats.py), scoring a sampler on a problem set (scoring.py), the
evaluation protocol a score is only comparable under (protocol.py), the grader's verdicts on
practice samples (feedback.py; the optional LLM judge is tutorloop.teachers.judge, a teacher),
and the accuracy report and experiment comparison (report.py).

May import: tutorloop.errors, secrets, config, hardware (the resolved runtime, in the protocol),
runtime (tracking: the report's stage minutes), data, llm, modeling, inference. Never teachers/,
train/ or registry/ (they import this package, not the reverse), never components/ or flows/.
"""
