"""Cross-lingual retrieval (the Chinese-CLIP setting, Yang et al. 2022, "Chinese CLIP: Contrastive
Vision-Language Pretraining in Chinese"): a caption in the task's ``language`` should find the
caption of the same scene in its ``target_language``, directly (cosine of the two text
embeddings: do the languages share one text space?) and through the images (the query's top-1
image by text->image score ranks the target captions by image->text score: do they meet through
the images, as a model trained only on image-caption pairs can?); ``variants.metrics
.crosslingual_recall``.

Items come two per scene (``common.evaluation.EvalTask``): the label is the scene, the ``target``
flag marks the caption in the target language; scenes with one caption evaluated
(limit_val_batches) are left out. Target caption j is a hit for query i when it is scene i's, when it is identical to it, or
when query i is identical to scene j's query (identical queries rank alike, so each of their
scenes is a right answer), as identical captions count in retrieval.

Logs ``<task name>/direct_R@k`` and ``<task name>/via_image_R@k`` (k = 1, 5, 10).
"""

from __future__ import annotations

import torch

from common.errors import UserError
from common.evaluation import Evaluator, TaskContext
from common.records import Encoded
from variants.metrics import crosslingual_recall


def _rows(record: Encoded, rows: torch.Tensor) -> Encoded:
    return Encoded(**{k: (v[rows] if v is not None else None) for k, v in vars(record).items()})


class CrossLingual(Evaluator):
    kinds = ("crosslingual",)

    def evaluate(self, context: TaskContext) -> dict[str, torch.Tensor]:
        records, model = context.records, context.model
        if records.target is None:
            raise UserError(
                f"{context.task.name}: the cross-lingual items carry no 'target' flag (which caption is in "
                f"{context.task.target_language}); a cross-lingual dataset's items must say it"
            )
        order = records.labels.argsort(stable=True)  # scene order
        target = records.target[order]
        query_rows, target_rows = order[~target], order[target]
        query_pairs, target_pairs = records.labels[query_rows], records.labels[target_rows]
        query_rows = query_rows[torch.isin(query_pairs, target_pairs)]
        target_rows = target_rows[torch.isin(target_pairs, query_pairs)]
        images = _rows(records.images, query_rows)
        queries, targets = _rows(records.texts, query_rows), _rows(records.texts, target_rows)
        query_to_image = image_to_target = None
        if model.scores_pairs:  # the term's own pair scores; "direct" stays the text cosine
            query_to_image = model.score(images, queries)[1].T
            image_to_target = model.score(images, targets)[0]
        query_tokens, target_tokens = records.tokens[query_rows], records.tokens[target_rows]
        same_target = (target_tokens[:, None] == target_tokens[None]).all(-1)
        same_query = (query_tokens[:, None] == query_tokens[None]).all(-1)
        assert queries.text is not None and targets.text is not None and images.image is not None
        metrics = crosslingual_recall(
            queries.text, targets.text, images.image, en_to_image=query_to_image, image_to_zh=image_to_target,
            positives=same_target | same_query,
        )  # fmt: skip
        return {self.metric(context.task, key): value for key, value in metrics.items()}
