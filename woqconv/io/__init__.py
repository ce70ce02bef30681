"""Containers: reading and writing checkpoint files, with no quantization knowledge.

One checkpoint directory (``checkpoint``: config, shards, index, other files) over shards that share one
interface (``tensors``, ``read``, ``read_bytes``, ``copy_into``, ``metadata``, ``close``): safetensors
(``safetensors_io``, with the streaming writer), INC's torch.save state dicts (``torch_file``) and
OpenVINO IRs (``openvino_file``). Output directories appear atomically (``output``), and large writes
start their writeback early (``writeback``).
"""
