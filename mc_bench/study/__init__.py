"""The study: the model x dataset grid as papermill notebooks on Dask (:mod:`.runner`), the study folder's tables and
histories (:mod:`.tables`), gains, learnability, the label's ceiling and ablations (:mod:`.analyses`), every method
judged on the study (:mod:`.selection`), what choosing for a new dataset costs each method (:mod:`.costs`), choosing
for a new folder (:mod:`.choice`), preflight (:mod:`.preflight`) and the report's figures (:mod:`.report`)."""

from .folders import analysis_folders, study_file
from .runner import drop_figures, run_cell, run_grid, run_study, run_study_notebooks
from .selection import selection_summary, study_selection
from .analyses import (gains_summary, gains_table, label_ceiling, learnability, write_ablations, write_ceiling,
                       write_gains)
from .tables import (build_combined_history, build_history, collect_tables, nearest_datasets, profile_study,
                     write_history)

__all__ = ["analysis_folders", "build_combined_history", "build_history", "collect_tables", "drop_figures",
           "gains_summary", "gains_table", "label_ceiling", "learnability", "nearest_datasets", "profile_study",
           "run_cell", "run_grid", "run_study", "run_study_notebooks", "selection_summary", "study_file",
           "study_selection", "write_ablations", "write_ceiling", "write_gains", "write_history"]
