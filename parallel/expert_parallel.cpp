#include "parallel/expert_parallel.h"

#include <numeric>

#include "common/error.h"

namespace condensa::parallel {
namespace {

class AllToAllFunction : public torch::autograd::Function<AllToAllFunction> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx,
                               const torch::Tensor& x,
                               int64_t comm_ptr,
                               std::vector<int64_t> send_rows,
                               std::vector<int64_t> recv_rows) {
    ctx->saved_data["comm"] = comm_ptr;
    ctx->saved_data["send"] = send_rows;
    ctx->saved_data["recv"] = recv_rows;
    return exchange(comm_ptr, x, send_rows, recv_rows);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad) {
    auto send = ctx->saved_data["send"].toIntVector();
    auto recv = ctx->saved_data["recv"].toIntVector();
    auto g = exchange(ctx->saved_data["comm"].toInt(), grad[0], recv, send);
    return {g, torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
  static torch::Tensor exchange(int64_t comm_ptr,
                                const torch::Tensor& x,
                                const std::vector<int64_t>& send,
                                const std::vector<int64_t>& recv) {
    auto& comm = *reinterpret_cast<Communicator*>(comm_ptr);
    auto shape = x.sizes().vec();
    shape[0] = std::accumulate(recv.begin(), recv.end(), int64_t(0));
    auto out = torch::empty(shape, x.options());
    auto in = x.contiguous();
    comm.all_to_all(in, send, out, recv);
    return out;
  }
};

struct AllToAllHandle : model::DispatchHandle {
  model::PermutationPlan plan;
  std::vector<int64_t> send_rows, recv_rows;
  torch::Tensor group_order;    // received row index of each grouped row
  torch::Tensor inverse_order;  // grouped row index of each received row
};

}  // namespace

torch::Tensor all_to_all_autograd(Communicator& comm,
                                  const torch::Tensor& x,
                                  const std::vector<int64_t>& send_rows,
                                  const std::vector<int64_t>& recv_rows) {
  return AllToAllFunction::apply(x, reinterpret_cast<int64_t>(&comm), send_rows, recv_rows);
}

AllToAllDispatcher::AllToAllDispatcher(Communicator& ep_group, int64_t num_experts)
    : comm_(ep_group), num_experts_(num_experts) {
  CONDENSA_CHECK(num_experts % comm_.size() == 0, ConfigError, "parallel.expert_parallel (",
                 comm_.size(), ") must divide model.num_routed_experts (", num_experts, ")");
  num_local_ = num_experts / comm_.size();
  first_local_ = comm_.rank() * num_local_;
}

model::Dispatched AllToAllDispatcher::dispatch(const torch::Tensor& x_TD,
                                               const torch::Tensor& topk_idx_TK,
                                               const torch::Tensor& probs_TK) {
  const int64_t P = comm_.size(), L = num_local_;
  auto handle = std::make_shared<AllToAllHandle>();
  handle->plan = model::plan_permutation(topk_idx_TK, probs_TK);
  auto x_send = x_TD.index_select(0, handle->plan.token_of_row);  // sorted by global expert

  // Exchange per-expert counts: rank j receives, from every source, counts for its experts.
  auto counts_E =
      torch::bincount(handle->plan.expert_of_row, {}, num_experts_).to(torch::kInt64).cpu();
  auto counts_in = comm_.to_device(counts_E.view({P, L}));
  auto counts_out = torch::empty_like(counts_in);
  comm_.all_to_all(counts_in, std::vector<int64_t>(P, 1), counts_out, std::vector<int64_t>(P, 1));
  auto recv_counts = comm_.to_cpu(counts_out).contiguous();  // [P sources, L local experts]
  auto send_per_rank = counts_E.view({P, L}).sum(1);
  auto recv_per_rank = recv_counts.sum(1);
  handle->send_rows.assign(send_per_rank.data_ptr<int64_t>(),
                           send_per_rank.data_ptr<int64_t>() + P);
  handle->recv_rows.assign(recv_per_rank.data_ptr<int64_t>(),
                           recv_per_rank.data_ptr<int64_t>() + P);

  auto x_recv = all_to_all_autograd(comm_, x_send, handle->send_rows, handle->recv_rows);

  // Regroup: received rows are (source, expert)-major; experts want (expert, source)-major.
  auto rc = recv_counts.accessor<int64_t, 2>();
  std::vector<int64_t> seg_start(P * L);
  int64_t pos = 0;
  for (int64_t j = 0; j < P; ++j) {
    for (int64_t e = 0; e < L; ++e) seg_start[j * L + e] = pos, pos += rc[j][e];
  }
  std::vector<int64_t> order;
  order.reserve(pos);
  model::Dispatched d;
  d.rows_per_expert.assign(L, 0);
  for (int64_t e = 0; e < L; ++e) {
    for (int64_t j = 0; j < P; ++j) {
      for (int64_t r = 0; r < rc[j][e]; ++r) order.push_back(seg_start[j * L + e] + r);
      d.rows_per_expert[e] += rc[j][e];
    }
  }
  auto dev = x_TD.device();
  handle->group_order = torch::tensor(order, torch::kInt64).to(dev);
  handle->inverse_order = torch::empty_like(handle->group_order);
  if (pos > 0)
    handle->inverse_order.index_copy_(0, handle->group_order,
                                      torch::arange(pos, handle->group_order.options()));
  d.x_ND = x_recv.index_select(0, handle->group_order);
  d.handle = handle;
  return d;
}

torch::Tensor AllToAllDispatcher::combine(const torch::Tensor& y_ND,
                                          const model::DispatchHandle& h) {
  const auto& handle = static_cast<const AllToAllHandle&>(h);
  auto y_recv = y_ND.index_select(0, handle.inverse_order);  // back to (source, expert)-major
  auto y_send = all_to_all_autograd(comm_, y_recv, handle.recv_rows, handle.send_rows);
  return model::unpermute_weighted(y_send, handle.plan.token_of_row, handle.plan.prob_of_row,
                                   handle.plan.num_tokens);
}

}  // namespace condensa::parallel
