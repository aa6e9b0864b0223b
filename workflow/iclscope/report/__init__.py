"""The report layer: figures, the layer atlas and the metric tables it reads. Never loads a model."""
