"""Math word problems and step-by-step reasoning: problems, teacher decompositions, training targets, the
question-generator / answerer loop (Socratic CoT)."""
