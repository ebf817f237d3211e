"""The core: tasks, the functional inner loop, meta-objectives and the meta-trainer."""

from learnreg.core.task import BatchStream, SingleTask, Split, Task, TaskFamily

__all__ = ["BatchStream", "Split", "Task", "TaskFamily", "SingleTask"]
