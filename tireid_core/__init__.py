"""tireid_core: the small core behind the tireid-notebooks paper reproductions."""
import warnings

# tqdm.auto (used here and by transformers) warns in every notebook kernel without ipywidgets; the notebooks show no
# progress bars (training runs in the DVC stages), so the warning would only clutter the exported HTML.
warnings.filterwarnings("ignore", message="IProgress not found")

__version__ = "0.1.0"
