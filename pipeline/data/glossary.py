"""A small built-in glossary of RL and ML concepts: the raw material of the embedded default data.

Each concept has a definition (a noun phrase that completes "<name> is ..."), a sentence on why it
matters, and an intuitive example. Good answers are built from these three parts; the failure
modes of rejected answers (vague, wrong, padded, repetitive, off-topic) are built from them too.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Concept:
    name: str
    definition: str
    why: str
    example: str


GLOSSARY: tuple[Concept, ...] = (
    Concept(
        "PPO's clip ratio",
        "the bound that limits how far the probability ratio between the new and the old policy may move away from one in a single update",
        "It keeps each policy update small, so that one noisy batch cannot wreck a policy that was working",
        "if the clip ratio is 0.2, an action that was taken with probability 0.5 gains no extra credit once its new probability passes 0.6",
    ),
    Concept(
        "the KL penalty in RLHF",
        "a cost proportional to the divergence between the trained policy and the frozen reference model",
        "It stops the policy from drifting into strange text that fools the reward model",
        "a chatbot that starts repeating flattering phrases pays a growing penalty because the reference model would rarely say them",
    ),
    Concept(
        "a reward model",
        "a network that reads a prompt and an answer and returns one number saying how much people would prefer that answer",
        "It turns slow human judgements into a fast signal that reinforcement learning can optimise",
        "after seeing thousands of ranked pairs, it scores a clear and correct answer higher than a rambling one",
    ),
    Concept(
        "the value function",
        "an estimate of the total future reward expected from a given state when following the current policy",
        "It gives a baseline that makes policy gradient estimates far less noisy",
        "in a maze, squares close to the exit get high values because the reward is only a few steps away",
    ),
    Concept(
        "the advantage",
        "the difference between the return of an action and the value the critic expected for that state",
        "It tells the policy which actions were better than usual rather than merely rewarded",
        "if a move scores ten points where the critic expected eight, its advantage is plus two",
    ),
    Concept(
        "generalized advantage estimation",
        "a way of computing advantages as an exponentially weighted sum of temporal difference errors controlled by a lambda parameter",
        "It trades a little bias for much lower variance in the policy gradient",
        "with lambda near zero the estimate trusts the critic, and with lambda near one it trusts the observed rewards",
    ),
    Concept(
        "the discount factor",
        "the number between zero and one that shrinks rewards the further they lie in the future",
        "It makes returns finite and expresses a preference for rewards that arrive sooner",
        "with a discount of 0.9, a reward of ten points two steps away is worth 8.1 points now",
    ),
    Concept(
        "the policy gradient",
        "the gradient of the expected return with respect to the parameters of a stochastic policy",
        "It lets an agent improve by making rewarded actions more likely without a model of the world",
        "a robot arm that grasps a cup after a certain motion nudges its parameters so that motion becomes more probable",
    ),
    Concept(
        "an entropy bonus",
        "an extra reward for keeping the action distribution of the policy spread out",
        "It encourages exploration and delays collapse onto a single action",
        "a game agent with an entropy bonus keeps trying a few different openings instead of always playing the same one",
    ),
    Concept(
        "the learning rate",
        "the step size that scales each gradient update of the model parameters",
        "Too large a value makes training diverge and too small a value makes it crawl",
        "walking downhill in fog, a learning rate is the length of each step you take in the steepest direction",
    ),
    Concept(
        "overfitting",
        "the situation where a model fits the noise of its training data and does worse on new data",
        "It is why we hold out a validation set and stop or regularise before the gap grows",
        "a student who memorises last year's exam answers fails when the questions are reworded",
    ),
    Concept(
        "dropout",
        "a regulariser that sets a random fraction of activations to zero during training",
        "It prevents units from relying on each other too much and so reduces overfitting",
        "a team where random members skip each practice learns to play well whoever shows up",
    ),
    Concept(
        "gradient clipping",
        "the rescaling of a gradient whose norm exceeds a threshold before the update is applied",
        "It protects training from rare huge gradients that would throw the parameters far away",
        "if the threshold is one and a gradient has norm five, every component is divided by five",
    ),
    Concept(
        "layer normalization",
        "an operation that rescales the activations of each example to zero mean and unit variance across its features",
        "It keeps activations in a stable range so deep networks train reliably",
        "whether a sentence has loud or quiet activations, each layer sees them on the same scale",
    ),
    Concept(
        "self-attention",
        "a mechanism where every token builds its representation as a weighted mix of all other tokens",
        "It lets a transformer relate words that are far apart in a sentence",
        "in the sentence about the trophy that did not fit in the suitcase, attention links it to the trophy",
    ),
    Concept(
        "a tokenizer",
        "the component that splits raw text into the integer tokens a language model reads",
        "Its vocabulary decides how efficiently text is encoded and which words are split into pieces",
        "a byte pair tokenizer may turn the word unhappiness into the pieces un, happi and ness",
    ),
    Concept(
        "an embedding",
        "a learned vector that represents a discrete item such as a token in a continuous space",
        "It lets similar items end up close together so the model can share what it learns",
        "the vectors for cat and dog end up nearer to each other than to the vector for carburettor",
    ),
    Concept(
        "the softmax function",
        "the function that turns a vector of scores into probabilities that are positive and sum to one",
        "It is how a language model converts its final scores into a distribution over next tokens",
        "scores of two, one and zero become probabilities of about 0.67, 0.24 and 0.09",
    ),
    Concept(
        "cross-entropy loss",
        "the negative log probability that the model assigns to the correct label",
        "It punishes confident mistakes heavily and is the standard loss for classification and language modelling",
        "assigning probability 0.9 to the right word costs about 0.1 while assigning 0.01 costs about 4.6",
    ),
    Concept(
        "sampling temperature",
        "the divisor applied to the scores of a language model before the softmax when sampling text",
        "It controls the trade-off between safe repetitive text and diverse risky text",
        "at temperature 0.1 a model almost always picks its top word, while at 1.5 it often picks surprising ones",
    ),
    Concept(
        "supervised fine-tuning",
        "further training of a pretrained model on demonstrations of the desired behaviour",
        "It teaches a base model the format and style of helpful answers before any reinforcement learning",
        "a model that only continued text learns to answer a question after seeing a few thousand written answers",
    ),
    Concept(
        "RLHF",
        "reinforcement learning from human feedback, where a policy is optimised against a reward model trained on human preferences",
        "It aligns a model with what people actually prefer rather than with what is merely likely text",
        "annotators rank two answers, a reward model learns the ranking, and PPO then pushes the chatbot towards the preferred style",
    ),
    Concept(
        "preference data",
        "a collection of prompts each paired with a chosen answer and a rejected answer",
        "It is the training signal for the reward model and records what labellers actually preferred",
        "for a question about tides, the chosen answer explains the moon while the rejected one talks about wind",
    ),
    Concept(
        "the Bradley-Terry model",
        "a model of pairwise comparisons where the probability that A beats B is the sigmoid of their score difference",
        "It is the loss behind reward models, turning rankings into a simple logistic objective",
        "if answer A scores two points above answer B, the model predicts A is preferred about 88 percent of the time",
    ),
    Concept(
        "reward hacking",
        "the behaviour of a policy that exploits flaws in the reward signal instead of doing the intended task",
        "It is why RLHF needs a KL penalty, held-out evaluation and human spot checks",
        "a summariser rewarded for length learns to pad every summary with filler sentences",
    ),
    Concept(
        "exploration",
        "the choice of actions whose outcome is uncertain in order to learn more about the environment",
        "Without it an agent can get stuck repeating a mediocre strategy forever",
        "a diner who always orders the same dish never finds out that the special is better",
    ),
    Concept(
        "Q-learning",
        "an off-policy algorithm that learns the value of each action in each state from bootstrapped targets",
        "It can learn an optimal policy from experience collected by any behaviour policy",
        "a taxi agent updates the value of turning left at a corner using the best value available at the next corner",
    ),
    Concept(
        "a Markov decision process",
        "a formal model of sequential decisions made of states, actions, transition probabilities and rewards",
        "It is the common language in which reinforcement learning problems are stated",
        "a board game becomes a Markov decision process once positions are states and legal moves are actions",
    ),
    Concept(
        "a replay buffer",
        "a memory that stores past transitions so they can be sampled again for training",
        "It breaks the correlation between consecutive samples and reuses expensive experience",
        "a game agent stores each move it made and later trains on a random handful of old moves",
    ),
    Concept(
        "on-policy learning",
        "learning only from data collected by the current version of the policy",
        "It keeps gradient estimates unbiased at the cost of throwing data away after each update",
        "PPO collects fresh rollouts after every few epochs because old rollouts came from a different policy",
    ),
    Concept(
        "importance sampling",
        "a technique that reweights samples from one distribution to estimate expectations under another",
        "It lets an algorithm reuse data collected by an older policy with a correction for the difference",
        "if the old policy took an action with probability 0.2 and the new one with 0.4, that sample counts double",
    ),
    Concept(
        "learning rate warmup",
        "a schedule that increases the learning rate from a small value over the first training steps",
        "It avoids unstable early updates while optimiser statistics are still poor estimates",
        "a transformer may start at one percent of its learning rate and reach the full value after a thousand steps",
    ),
    Concept(
        "weight decay",
        "a penalty that shrinks every parameter slightly towards zero at each update",
        "It discourages large weights and usually improves generalisation",
        "with a decay of 0.01, a weight that receives no gradient slowly fades towards zero",
    ),
    Concept(
        "early stopping",
        "ending training when the validation loss stops improving",
        "It is a cheap guard against overfitting that needs no change to the model",
        "if validation loss has not improved for five evaluations in a row, training halts and keeps the best checkpoint",
    ),
    Concept(
        "a validation set",
        "data held out from training that is used to tune choices and detect overfitting",
        "It gives an honest estimate of performance on data the model has not fitted",
        "a spam filter is trained on last month's mail and checked on a separate sample it never saw",
    ),
    Concept(
        "the transformer",
        "a neural network architecture built from stacked self-attention and feed-forward layers",
        "It processes all tokens in parallel and scales well, which made large language models possible",
        "a translation model reads a whole German sentence at once and attends to the right words when writing English",
    ),
    Concept(
        "beam search",
        "a decoding method that keeps the few most probable partial sequences at every step",
        "It finds high probability outputs that greedy decoding would miss",
        "with a beam of three, a translator keeps three candidate sentences alive and extends each one word at a time",
    ),
    Concept(
        "the reference model in PPO",
        "a frozen copy of the starting policy against which the KL penalty is measured",
        "It anchors the trained policy to fluent language while the reward pulls it towards preferred answers",
        "if the policy invents a phrase the reference finds very unlikely, the log ratio between them grows and so does the penalty",
    ),
    Concept(
        "advantage whitening",
        "normalising the advantages of a batch to zero mean and unit standard deviation",
        "It keeps the scale of policy updates stable even when rewards change scale",
        "advantages of 100, 110 and 90 become roughly zero, plus 1.2 and minus 1.2 after whitening",
    ),
    Concept(
        "the critic",
        "the part of an actor-critic method that learns to predict values for the states the actor visits",
        "It supplies the baseline that turns noisy returns into useful advantages",
        "while the actor chooses moves in a game, the critic estimates how likely the current position is to win",
    ),
)


# Filler for the padded failure mode: polite noise that adds length but no content.
PADDING_OPENERS = (
    "Great question! This is a really interesting and important topic that many people ask about, and there is a lot that could be said about it.",
    "Thank you for asking. Before answering, it is worth saying that this is a topic that comes up very often and that many experts discuss at length.",
    "What a wonderful thing to wonder about! Many people find this confusing at first, and that is completely normal and nothing to worry about.",
)
# Vague answers to a task: fluent, sure of themselves, and never stating the answer. Several, as real
# vague answers vary: one fixed sentence would be the single most frequent answer of the demonstrations
# and draw greedy decoding to it whatever the prompt.
VAGUE_TASK_ANSWERS = (
    "This is a simple task and the answer is easy to find if you think about it.",
    "You can work this out yourself by reading the question carefully, one step at a time.",
    "It is not hard: look at the question again and the answer will become clear.",
    "Questions like this one come up often, and with a little care anyone can solve them.",
)
VAGUE_EXPLANATIONS = (
    "{name} is an idea and it is widely used. It is important and people use it a lot.",
    "{name} is a well known idea that comes up a lot. It matters in many places and is worth knowing.",
    "{name} is one of those things that is useful in practice. Many people use it, and it helps.",
)
PADDING_CLOSERS = (
    "I hope this helps, and please let me know if you have any other questions, since there is always more to learn about topics like this one.",
    "In conclusion, this is a very important idea, and it is always good to keep learning, asking questions and exploring new ideas every day.",
    "Overall, it is a fascinating subject, and there are many resources online where you can read much more about it whenever you have time.",
)

# The off-topic failure mode answers about something unrelated to machine learning.
OFF_TOPIC_ANSWERS = (
    "The weather today is mild with a light breeze from the west, and rain is expected later in the evening.",
    "Bread rises because yeast ferments sugar and releases carbon dioxide, which is trapped by the gluten in the dough.",
    "The Pacific Ocean is the largest ocean on Earth and covers about a third of the planet's surface.",
    "A good cup of tea needs freshly boiled water and about three minutes of steeping before the milk goes in.",
    "Chess openings such as the Italian game aim to control the centre and develop the pieces quickly.",
)

# Words of five kinds, for the tasks that pick the word of a named kind out of a list; each word
# belongs to exactly one kind (no "orange", both a fruit and a colour).
CATEGORIES: dict[str, tuple[str, ...]] = {
    "fruit": ("apple", "banana", "cherry", "strawberry", "lemon", "mango"),
    "animal": ("kitten", "parrot", "rabbit", "tiger", "horse", "turtle"),
    "colour": ("yellow", "purple", "silver", "green", "brown", "pink"),
    "tool": ("hammer", "ladder", "shovel", "needle", "bucket", "wrench"),
    "place": ("river", "mountain", "forest", "island", "garden", "desert"),
}
# How a prompt names one word of each kind ("an animal").
CATEGORY_NOUNS = {"fruit": "a fruit", "animal": "an animal", "colour": "a colour", "tool": "a tool", "place": "a place"}

# Plain-text word list for the counting task: the words of every kind and a few others.
WORDS = (
    *(word for words in CATEGORIES.values() for word in words),
    "window", "pepper", "letter", "balloon", "summer", "mirror", "rocket", "pillow", "butter", "coffee",
    "bottle", "tomato", "marble", "carrot", "planet", "engine", "dinner", "sunset",
)


_CONTENT_WORD = re.compile(r"[a-z0-9]+")
_COMMON_WORDS = frozenset(
    "a an and are as at be by can for from in into is it its of on or that the this to was which with "
    "what when where how why than then so such one two more most less each every other its their they "
    "them it's not no do does did if while".split()
)


def _content_words(text: str) -> set[str]:
    return {w for w in _CONTENT_WORD.findall(text.lower()) if w not in _COMMON_WORDS and len(w) > 2}


@functools.cache
def _concept_words(concept: Concept) -> frozenset[str]:
    """A glossary entry's content words, computed once per concept (every answer is compared with all of them)."""
    return frozenset(_content_words(" ".join((concept.name, concept.definition, concept.why, concept.example))))


def closest_concept(text: str) -> Concept | None:
    """The glossary concept whose entry shares the most content words with `text` (None: shares none).

    An answer "about" a concept names it and says what its entry says; one about another concept, or
    a mix of several, shares more words with another entry. Ties go to no concept.
    """
    words = _content_words(text)
    overlaps = sorted(((len(words & _concept_words(c)), i) for i, c in enumerate(GLOSSARY)), reverse=True)
    (best, index), (second, _) = overlaps[0], overlaps[1]
    return GLOSSARY[index] if best > second else None
