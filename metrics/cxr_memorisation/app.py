import evaluate
from evaluate.utils import launch_gradio_widget

module = evaluate.load("cxr_memorisation")
launch_gradio_widget(module)
