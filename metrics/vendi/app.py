import evaluate
from evaluate.utils import launch_gradio_widget

module = evaluate.load("vendi")
launch_gradio_widget(module)
