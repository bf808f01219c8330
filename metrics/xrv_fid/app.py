import evaluate
from evaluate.utils import launch_gradio_widget

module = evaluate.load("xrv_fid")
launch_gradio_widget(module)
